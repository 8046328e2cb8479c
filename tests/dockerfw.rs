//! Ports Docker publishes obey the host's firewall rules, and containers do
//! not reach the cloud metadata address unless the config allows it: on a
//! test host that runs dockerd, probed from this machine and from a second
//! test host.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::stacks::DOCKER_PREP;
use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::{Kind, Testbed};

const PACKAGES: &str = "packages:\n  present: [ufw, docker.io, docker-compose, busybox-static]\n";

const COMPOSE: &str = "version: \"2.4\"\nservices:\n  web:\n    image: local/busybox:1\n    \
    command: [\"httpd\", \"-f\", \"-p\", \"80\"]\n    ports: [\"8080:80\"]\n    restart: unless-stopped\n";

/// The role: SSH from the test network and port 80 on the host open to all (80 so that only the
/// metadata rule can keep a container from the listener there), then `extra`.
fn role(extra_rules: &str, extra: &str) -> String {
    format!(
        "{PACKAGES}firewall:\n  incoming: deny\n{extra}  rules:\n    - port: \"22\"\n      from: 10.213.0.0/16\n    - port: \"80\"\n{extra_rules}\
         stacks:\n  - name: web\n"
    )
}

/// Does an HTTP server answer on `addr` from this machine?
fn answers_here(addr: Ipv4Addr) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&SocketAddr::from((addr, 8080)), Duration::from_secs(3))
    else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut head = [0u8; 7];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1."
}

/// Does it answer on `addr` from test host `from`?
fn answers_from(bed: &Testbed, from: usize, addr: Ipv4Addr) -> bool {
    let out = bed.ssh(
        from,
        &format!(
            "timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/8080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && head -c 7 <&3'"
        ),
    );
    String::from_utf8_lossy(&out.stdout) == "HTTP/1."
}

fn apply(repo: &FleetRepo) {
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_published_port_is_reached_only_from_where_the_firewall_rules_say() {
    let bed = Testbed::start_kind(2, Kind::Docker);
    let repo = FleetRepo::minimal(&bed, &[("web", PACKAGES)]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  ssh: {from: [10.213.0.0/16]}\n",
    );
    // The second host only knocks: it is in the fleet with nothing to do.
    repo.write(
        &format!("hosts/{}.yaml", bed.host(1).name),
        &format!(
            "provider: existing\naddress: {}\nroles: []\n",
            bed.host(1).address
        ),
    );
    repo.commit("second host is a client");
    apply(&repo);
    bed.ssh_ok(0, DOCKER_PREP);
    let (server, here) = (bed.host(0).address, bed.controller_address(0));

    // No rule for 8080: closed to both, though the server answers on the host itself.
    repo.write("roles/web.yaml", &role("", ""));
    repo.write("stacks/web/docker-compose.yml", COMPOSE);
    repo.commit("web stack behind the firewall");
    let plan = stdout(&repo.tk(&["plan"]));
    assert!(
        plan.contains("-A tidekeeper-published -j DROP")
            && plan.contains(&format!(
                "file {}",
                "/etc/tidekeeper/container-firewall.rules"
            )),
        "{plan}"
    );
    apply(&repo);
    let local = bed.ssh_ok(
        0,
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && head -c 7 <&3'",
    );
    assert_eq!(local, "HTTP/1.", "the container's server runs");
    assert!(!answers_here(server), "no rule admits 8080 from here");
    assert!(!answers_from(&bed, 1, server), "nor from the other host");

    // Drift: the chain emptied by hand opens the port (Docker's own
    // behaviour); the plan shows it and the apply closes it again.
    bed.ssh_ok(
        0,
        "iptables -F DOCKER-USER && iptables -A DOCKER-USER -j RETURN",
    );
    assert!(
        answers_here(server),
        "without the chain Docker's port is open to all"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stdout(&out).contains("-A DOCKER-USER -o docker0 -j tidekeeper-published"),
        "{}",
        text(&out)
    );
    apply(&repo);
    assert!(!answers_here(server), "closed again");

    // A rule for this machine only.
    repo.write(
        "roles/web.yaml",
        &role(
            &format!("    - port: \"8080\"\n      from: {here}/32\n"),
            "",
        ),
    );
    repo.commit("8080 from the controller");
    apply(&repo);
    assert!(answers_here(server), "admitted from the rule's source");
    assert!(
        !answers_from(&bed, 1, server),
        "still closed to another source"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Docker restarting and the host rebooting keep the rules.
    bed.ssh_ok(0, "systemctl restart docker");
    bed.reboot(0);
    bed.ssh_ok(
        0,
        "for i in $(seq 100); do docker ps --format '{{.Ports}}' | grep -q 8080 && exit 0; sleep 0.3; done; exit 1",
    );
    assert!(
        answers_here(server),
        "after a reboot, still admitted from here"
    );
    assert!(
        !answers_from(&bed, 1, server),
        "and still closed to the other host"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The firewall section gone: what tidekeeper added goes with it.
    repo.write(
        "roles/web.yaml",
        &format!("{PACKAGES}stacks:\n  - name: web\n"),
    );
    repo.commit("no firewall");
    let out = repo.tk(&["apply", "--yes", "--allow-mass-delete"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(
            0,
            "iptables -S DOCKER-USER; iptables -t raw -S | grep -c tidekeeper || true"
        ),
        "-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n0\n"
    );
    assert!(
        !bed.ssh(0, "test -e /etc/tidekeeper/container-firewall.rules")
            .status
            .success()
    );
}

#[test]
fn containers_reach_the_metadata_address_only_when_the_config_allows_it() {
    let bed = Testbed::start_kind(1, Kind::Docker);
    let repo = FleetRepo::minimal(&bed, &[("web", PACKAGES)]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  ssh: {from: [10.213.0.0/16]}\n",
    );
    apply(&repo);
    bed.ssh_ok(0, DOCKER_PREP);
    // A stand-in for the cloud's metadata service, on the host.
    bed.ssh_ok(
        0,
        "ip addr add 169.254.169.254/32 dev lo && \
         mkdir -p /srv/meta/latest && echo secret-user-data > /srv/meta/latest/user-data && \
         systemd-run --quiet --unit=metadata-stand-in busybox httpd -f -p 169.254.169.254:80 -h /srv/meta",
    );
    // busybox's wget crashes (Debian's static 1.35 build); its nc does not.
    let from_container = |bed: &Testbed| {
        let out = bed.ssh(
            0,
            r#"docker run --rm local/busybox:1 /bin/busybox sh -c 'printf "GET /latest/user-data HTTP/1.0\r\n\r\n" | /bin/busybox nc -w 3 169.254.169.254 80 | /bin/busybox tail -n 1'"#,
        );
        assert!(
            out.status.success(),
            "{}",
            crate::support::fleet::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim() == "secret-user-data"
    };

    repo.write("roles/web.yaml", &role("", ""));
    repo.write("stacks/web/docker-compose.yml", COMPOSE);
    repo.commit("docker behind the firewall");
    apply(&repo);
    // The host's own busybox is static and crashes resolving names
    // against the host's NSS; bash reaches the address as any client would.
    let host = bed.ssh_ok(
        0,
        "bash -c 'exec 3<>/dev/tcp/169.254.169.254/80 && \
         printf \"GET /latest/user-data HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3' | tail -n 1",
    );
    assert_eq!(
        host.trim(),
        "secret-user-data",
        "the host itself reaches it"
    );
    assert!(!from_container(&bed), "a container does not");

    repo.write(
        "roles/web.yaml",
        &role("", "  metadata_from_containers: allow\n"),
    );
    repo.commit("containers may read metadata");
    let plan = stdout(&repo.tk(&["plan"]));
    assert!(
        plan.contains("-t raw -A tidekeeper-metadata -d 169.254.169.254/32 -i docker0 -j DROP"),
        "{plan}"
    );
    apply(&repo);
    assert!(from_container(&bed), "allowed, a container reaches it");
}
