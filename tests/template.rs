//! The shipped example fleet and resolution semantics.

use tidekeeper::model::desired::{HandlerAction, Resource};
use tidekeeper::source::template_tree;

use crate::support::minimal;

#[test]
fn shipped_template_validates_clean() {
    let fleet = tidekeeper::model::load(&template_tree())
        .unwrap_or_else(|d| panic!("template invalid:\n{d}"));
    let names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["agent", "metal", "platform", "workspace-1"]);
    assert_eq!(fleet.jobs.len(), 3);
    assert!(
        fleet
            .policies
            .iter()
            .any(|p| p == "policies/no-world-ssh.rego")
    );
}

#[test]
fn template_workspace_runs_containers_under_gvisor_and_limits_ssh() {
    let fleet = tidekeeper::model::load(&template_tree()).unwrap();
    let ws = fleet.host("workspace-1").unwrap();
    let daemon = ws
        .resources
        .iter()
        .find_map(|r| match r {
            Resource::File(f) if f.path == "/etc/docker/daemon.json" => Some(f),
            _ => None,
        })
        .expect("daemon.json managed");
    let json: serde_json::Value =
        serde_json::from_slice(&daemon.content.bytes).expect("rendered daemon.json is JSON");
    assert_eq!(json["default-runtime"], "runsc");
    assert_eq!(json["icc"], false);
    let fw = ws
        .resources
        .iter()
        .find_map(|r| match r {
            Resource::Firewall(f) => Some(f),
            _ => None,
        })
        .unwrap();
    let ssh = fw.rules.iter().find(|r| r.from_port == Some(22)).unwrap();
    assert_eq!(
        ssh.from, "10.0.0.2/32",
        "host var overrides the fleet default for the ssh source"
    );
    assert!(
        fw.rules.iter().all(|r| r.from_port != Some(2376)),
        "no Docker API port is opened where nothing listens on it"
    );
}

#[test]
fn variables_follow_fleet_then_role_then_host_precedence() {
    let fleet = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\ndefaults:\n  vars: {a: fleet, b: fleet, c: fleet}\n",
        )
        .file(
            "roles/base.yaml",
            "vars: {b: role, c: role}\nfiles:\n  - path: /etc/v\n    template: v.j2\n",
        )
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.0.0.1\nroles: [base]\nvars: {c: host}\n",
        )
        .file(
            "templates/v.j2",
            "{{ a }} {{ b }} {{ c }} {{ host.name }} {{ fleet.name }}",
        )
        .load()
        .unwrap();
    let Resource::File(f) = &fleet.hosts[0].resources[0] else {
        panic!()
    };
    assert_eq!(
        String::from_utf8_lossy(&f.content.bytes),
        "fleet role host web test"
    );
}

#[test]
fn count_groups_expand_into_numbered_hosts_with_their_index() {
    let fleet = minimal()
        .file(
            "hosts/web.yaml",
            "provider: local\ncount: 3\nroles: [base]\n",
        )
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/i\n    template: i.j2\n",
        )
        .file(
            "templates/i.j2",
            "{{ host.name }}={{ host.index }} of {{ host.group }}",
        )
        .load()
        .unwrap();
    let rendered: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| match &h.resources[0] {
            Resource::File(f) => String::from_utf8_lossy(&f.content.bytes).into_owned(),
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        rendered,
        ["web-1=1 of web", "web-2=2 of web", "web-3=3 of web"]
    );
}

#[test]
fn handlers_from_roles_are_collected_once() {
    let fleet = minimal()
        .file("hosts/web.yaml", "provider: existing\naddress: 10.0.0.1\nroles: [base, extra]\n")
        .file("roles/base.yaml", "handlers: [{name: r, restart: ssh}]\nfiles:\n  - {path: /etc/a, content: a, notify: [r]}\n")
        .file("roles/extra.yaml", "handlers: [{name: r, restart: ssh}]\nfiles:\n  - {path: /etc/b, content: b, notify: [r]}\n")
        .load()
        .unwrap();
    assert_eq!(fleet.hosts[0].handlers.len(), 1);
    assert_eq!(
        fleet.hosts[0].handlers[0].action,
        HandlerAction::Restart("ssh".into())
    );
}

#[test]
fn a_role_used_by_many_hosts_reports_its_error_once() {
    let errors = minimal()
        .file(
            "hosts/web.yaml",
            "provider: local\ncount: 50\nroles: [base]\n",
        )
        .file(
            "roles/base.yaml",
            "files:\n  - path: /etc/x\n    template: x.j2\n",
        )
        .file("templates/x.j2", "{{ missing }}")
        .errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn templates_see_every_hosts_facts_in_hosts() {
    let tmpl = "{% for name, h in hosts|dictsort %}{% if h.labels.tier == \"app\" %}{{ name }} {{ h.private_address or h.address }} {{ h.group or \"-\" }}\n{% endif %}{% endfor %}";
    let fleet = minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\ndefaults: {ssh: {from: [10.213.0.0/16]}}\nnetworks:\n  private: {ip_range: 10.0.0.0/16}\n",
        )
        .file("templates/allow.j2", tmpl)
        .file(
            "roles/base.yaml",
            "files:\n  - {path: /etc/allow, template: allow.j2}\n",
        )
        .file(
            "hosts/web.yaml",
            "provider: existing\naddress: 10.213.0.2\nroles: [base]\nlabels: {tier: app}\n",
        )
        .file(
            "hosts/db.yaml",
            "provider: hetzner\nserver:\n  type: cx22\n  image: debian-12\n  location: fsn1\n  networks: [{name: private, ip: 10.0.0.7}]\nlabels: {tier: app}\n",
        )
        .file(
            "hosts/pool.yaml",
            "provider: existing\naddress: 10.213.0.9\nlabels: {tier: cache}\n",
        )
        .load()
        .unwrap_or_else(|d| panic!("{d}"));
    let web = fleet.host("web").unwrap();
    let allow = web
        .resources
        .iter()
        .find_map(|r| match r {
            Resource::File(f) if f.path == "/etc/allow" => Some(f),
            _ => None,
        })
        .expect("rendered");
    assert_eq!(
        String::from_utf8_lossy(&allow.content.bytes),
        "db 10.0.0.7 -\nweb 10.213.0.2 -\n"
    );
    // A variable named `hosts` is the user's own.
    let fleet = minimal()
        .file("templates/allow.j2", "{{ hosts }}")
        .file(
            "roles/base.yaml",
            "vars: {hosts: mine}\nfiles:\n  - {path: /etc/allow, template: allow.j2}\n",
        )
        .load()
        .unwrap_or_else(|d| panic!("{d}"));
    let f = fleet.hosts[0]
        .resources
        .iter()
        .find_map(|r| match r {
            Resource::File(f) if f.path == "/etc/allow" => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&f.content.bytes), "mine");
}
