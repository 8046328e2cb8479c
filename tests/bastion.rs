//! Hosts reachable only through a jump host (`ssh.via`): their SSH port
//! refuses everyone but the bastion, as a private network or a cloud
//! firewall would, and tidekeeper tunnels through one shared connection.

use std::fs;

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::Testbed;

/// Logins on host `i` from this machine, counted in its sshd journal, but
/// for the sessions that counted: their client ports are in `counting`, and
/// this one's is added.
fn logins_from_controller(bed: &Testbed, i: usize, counting: &mut Vec<String>) -> usize {
    let from = bed.controller_address(i);
    let skip: String = counting
        .iter()
        .map(|p| format!(" -e 'port {p} '"))
        .collect();
    let out = bed.ssh_ok(
        i,
        &format!(
            "set -- $SSH_CLIENT; echo \"$2\"; journalctl -q -u ssh --no-pager \
             | grep 'Accepted publickey for root from {from} ' \
             | grep -v -e \"port $2 \"{skip} | wc -l"
        ),
    );
    let (port, count) = out.trim().split_once('\n').expect("a port and a count");
    counting.push(port.trim().to_string());
    count.trim().parse().expect("a count")
}

/// Wait (up to 10 s: the journal lags) until host `i` counts `expected`
/// logins from this machine since `before`, and check that it stays so.
fn expect_logins(
    bed: &Testbed,
    i: usize,
    before: usize,
    expected: usize,
    counting: &mut Vec<String>,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = logins_from_controller(bed, i, counting).saturating_sub(before);
    while got != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        got = logins_from_controller(bed, i, counting).saturating_sub(before);
    }
    assert_eq!(
        got, expected,
        "logins on {} since the count before",
        bed.hosts[i].name
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let later = logins_from_controller(bed, i, counting).saturating_sub(before);
    assert_eq!(
        later, expected,
        "logins on {}, a second later",
        bed.hosts[i].name
    );
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

    let mut counting = Vec::new();
    let before = logins_from_controller(&bed, 0, &mut counting);
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
    // hosts behind it: the bastion carries both hosts over one connection.
    expect_logins(&bed, 0, before, 2, &mut counting);

    // A jump host outside the fleet, named by address, pinned in known_hosts.
    let outside = |i: usize| host(i, &format!("root@{bastion}:22"));
    repo.write("hosts/app-1.yaml", &outside(1))
        .write("hosts/app-2.yaml", &outside(2));
    fs::remove_file(repo.path.join("hosts/bastion.yaml")).unwrap();
    repo.commit("bastion outside the fleet");
    let before = logins_from_controller(&bed, 0, &mut counting);
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
    expect_logins(&bed, 0, before, 1, &mut counting);

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
