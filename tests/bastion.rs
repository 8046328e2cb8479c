//! Hosts reachable only through a jump host (`ssh.via`): their SSH port
//! refuses everyone but the bastion, as a private network or a cloud
//! firewall would, and tidekeeper tunnels through one shared connection.

use std::fs;

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::Testbed;

/// Logins on host `i` from this machine, counted in its sshd journal.
fn logins_from_controller(bed: &Testbed, i: usize) -> usize {
    let from = bed.controller_address(i);
    let out = bed.ssh(
        i,
        &format!("journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey for root from {from} ' || true"),
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

const ROLE: &str = "files:\n  - {path: /etc/app.conf, content: \"behind the bastion\\n\"}\n";

#[test]
fn hosts_behind_a_bastion_are_planned_and_applied_through_one_shared_connection() {
    let bed = Testbed::start(3);
    let bastion = bed.hosts[0].address;
    // app-1 and app-2 answer SSH from the bastion only.
    for i in [1, 2] {
        bed.restrict_port(i, 22, &[bastion]);
    }
    let known = fs::read_to_string(&bed.known_hosts).unwrap();
    let host = |i: usize, via: &str| {
        format!(
            "provider: existing\naddress: {}\nssh: {{via: \"{via}\"}}\nroles: [app]\n",
            bed.hosts[i].address
        )
    };
    let repo = FleetRepo::with_files(
        bed.key.clone(),
        &[
            ("tidekeeper.yaml", "fleet: private\n"),
            ("roles/app.yaml", ROLE),
            ("known_hosts", &known),
            (
                "hosts/bastion.yaml",
                &format!("provider: existing\naddress: {bastion}\n"),
            ),
            ("hosts/app-1.yaml", &host(1, "bastion")),
            ("hosts/app-2.yaml", &host(2, "bastion")),
        ],
    );

    // Without the bastion, the hosts cannot be reached at all.
    let direct = FleetRepo::with_files(
        bed.key.clone(),
        &[
            ("tidekeeper.yaml", "fleet: private\n"),
            ("roles/app.yaml", ROLE),
            ("known_hosts", &known),
            (
                "hosts/app-1.yaml",
                &format!(
                    "provider: existing\naddress: {}\nroles: [app]\n",
                    bed.hosts[1].address
                ),
            ),
        ],
    );
    let out = direct.tk(&["plan"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("cannot reach"), "{}", text(&out));

    let before = logins_from_controller(&bed, 0);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Apply complete: 2 added"),
        "{}",
        text(&out)
    );
    for i in [1, 2] {
        let written = fs::read_to_string(bed.root(i).join("etc/app.conf")).unwrap();
        assert_eq!(written, "behind the bastion\n");
    }
    // One login for the bastion's own plan, one for the tunnels of both
    // hosts behind it (the count's own login is the `- 1`).
    let logins = logins_from_controller(&bed, 0) - before - 1;
    assert_eq!(
        logins, 2,
        "the bastion should carry both hosts over one connection"
    );

    // A jump host outside the fleet, named by address, pinned in known_hosts.
    let outside = |i: usize| host(i, &format!("root@{bastion}:22"));
    repo.write("hosts/app-1.yaml", &outside(1))
        .write("hosts/app-2.yaml", &outside(2));
    fs::remove_file(repo.path.join("hosts/bastion.yaml")).unwrap();
    repo.commit("bastion outside the fleet");
    let before = logins_from_controller(&bed, 0);
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
    assert_eq!(logins_from_controller(&bed, 0) - before - 1, 1);

    // Every hop's key is pinned: a bastion whose key is not is refused, and
    // the hosts behind it are not contacted.
    let unpinned: String = known
        .lines()
        .filter(|l| !l.starts_with(&format!("{bastion} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    repo.write("known_hosts", &unpinned);
    repo.commit("bastion key unpinned");
    let out = repo.tk(&["plan"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("host key of {bastion}:22 is not pinned")),
        "{}",
        text(&out)
    );
}
