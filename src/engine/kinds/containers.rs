//! The firewall's rules for containers, on a host that runs Docker. Docker
//! publishes a port (`ports: ["8080:80"]`) with its own NAT and FORWARD
//! rules, which ufw's INPUT rules never see: the port is open to everyone
//! while `ufw status` says deny. tidekeeper owns the `DOCKER-USER` chain
//! Docker leaves to its users, so that a published port is admitted only as
//! the host's firewall rules say (matched on the host port the client asked
//! for), and a chain in the raw table that keeps containers from the cloud
//! metadata service unless `metadata_from_containers` allows it. The rules
//! are a file loaded with `iptables-restore --noflush` (which replaces the
//! chains it names, atomically) by a unit ordered before docker.service.

use crate::engine::item::Item;
use crate::model::desired::{Firewall as Rules, FirewallRule, Policy, RuleAction};

/// The rules, as `iptables-restore` reads them.
pub(crate) const RULES_PATH: &str = "/etc/tidekeeper/container-firewall.rules";
/// The unit that loads them at boot.
pub(crate) const UNIT: &str = "tidekeeper-container-firewall.service";
const UNIT_PATH: &str = "/etc/systemd/system/tidekeeper-container-firewall.service";
const PUBLISHED: &str = "tidekeeper-published";
const METADATA: &str = "tidekeeper-metadata";
/// Where cloud servers find their metadata (and user data).
pub(crate) const METADATA_ADDRESS: &str = "169.254.169.254";
/// Docker's default bridge and the bridges of its (compose) networks.
const BRIDGES: [&str; 2] = ["docker0", "br-+"];
/// A raw-table line is prefixed so, as the probe prints it.
const RAW: &str = "-t raw ";

/// Packages that bring dockerd.
const DOCKER_PACKAGES: [&str; 3] = ["docker.io", "docker-ce", "moby-engine"];

/// Does the host run Docker: a Docker package or a compose stack in its config?
pub(crate) fn runs_docker(items: &[Item]) -> bool {
    items.iter().any(|i| match i {
        Item::Package { name, state } => {
            DOCKER_PACKAGES.contains(&name.as_str())
                && *state != crate::model::desired::PackageState::Absent
        }
        Item::Stack { .. } => true,
        _ => false,
    })
}

/// Every rule tidekeeper keeps in the chains, as `iptables -S` prints it
/// (raw-table lines prefixed with `-t raw `), in order.
pub(crate) fn lines(fw: &Rules) -> Vec<String> {
    let mut out: Vec<String> =
        vec!["-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".into()];
    // Containers' own traffic (outbound, to each other) is Docker's to judge.
    for b in BRIDGES {
        out.push(format!("-A DOCKER-USER -i {b} -j RETURN"));
    }
    for b in BRIDGES {
        out.push(format!("-A DOCKER-USER -o {b} -j {PUBLISHED}"));
    }
    out.push("-A DOCKER-USER -j RETURN".into());
    // From outside, only to a published port (DNAT), never to a
    // container's address directly.
    out.push(format!(
        "-A {PUBLISHED} -m conntrack ! --ctstate DNAT -j DROP"
    ));
    for r in &fw.rules {
        out.extend(published(r));
    }
    match fw.incoming {
        Policy::Allow => {}
        Policy::Deny => out.push(format!("-A {PUBLISHED} -j DROP")),
        Policy::Reject => out.push(format!("-A {PUBLISHED} -j {}", target(Policy::Reject))),
    }
    // `iptables -S` lists the built-in chains' rules before those of the
    // chains users made: the jump comes first, as the probe reads it back.
    out.push(format!("{RAW}-A PREROUTING -j {METADATA}"));
    let metadata = fw.metadata_from_containers.unwrap_or(Policy::Deny);
    if metadata != Policy::Allow {
        for b in BRIDGES {
            out.push(format!(
                "{RAW}-A {METADATA} -d {METADATA_ADDRESS}/32 -i {b} -j {}",
                target(metadata)
            ));
        }
    }
    out
}

fn target(p: Policy) -> &'static str {
    match p {
        Policy::Allow => "RETURN",
        Policy::Deny => "DROP",
        Policy::Reject => "REJECT --reject-with icmp-port-unreachable",
    }
}

/// One firewall rule for published ports: the port is the host's (the one
/// clients connect to), read from the connection's original destination.
fn published(r: &FirewallRule) -> Vec<String> {
    // Docker publishes IPv4 only unless told otherwise; so does this chain.
    if r.from.contains(':') {
        return vec![];
    }
    let mut head = format!("-A {PUBLISHED}");
    if r.from != "any" {
        head.push_str(&format!(" -s {}", network(&r.from)));
    }
    if let Some(i) = &r.interface {
        head.push_str(&format!(" -i {i}"));
    }
    let verdict = match r.action {
        RuleAction::Allow | RuleAction::Limit => "RETURN",
        RuleAction::Deny => "DROP",
        RuleAction::Reject => target(Policy::Reject),
    };
    let ports = match (r.from_port, r.to_port) {
        (Some(a), Some(b)) if a != b => Some(format!("{a}:{b}")),
        (Some(a), _) => Some(a.to_string()),
        _ => None,
    };
    let protos: Vec<&str> = match (r.proto.as_str(), &ports) {
        ("any", Some(_)) => vec!["tcp", "udp"],
        ("any", None) => vec![""],
        (p, _) => vec![p],
    };
    protos
        .into_iter()
        .map(|p| {
            let mut l = head.clone();
            if !p.is_empty() {
                l.push_str(&format!(" -p {p}"));
            }
            if let Some(ports) = &ports {
                l.push_str(&format!(" -m conntrack --ctorigdstport {ports}"));
            }
            format!("{l} -j {verdict}")
        })
        .collect()
}

/// A source as iptables prints it: the network's address, `/32` for one host.
fn network(from: &str) -> String {
    let (addr, len) = from.split_once('/').unwrap_or((from, "32"));
    match (addr.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) {
        (Ok(a), Ok(len)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        _ => from.to_string(),
    }
}

/// The file `iptables-restore --noflush` loads: it empties and refills the
/// chains it names, and no others.
pub(crate) fn rules_file(fw: &Rules) -> String {
    let lines = lines(fw);
    let mut s = String::from(
        "# Managed by tidekeeper from the host's firewall rules: which sources reach\n\
         # ports Docker publishes, and whether containers reach the cloud metadata service.\n\
         *filter\n:DOCKER-USER - [0:0]\n",
    );
    // Declaring a chain does not empty it under --noflush: each load
    // would append to what the last one left. Flushed here, in the same
    // transaction, no packet sees the chains half-filled.
    s.push_str(&format!(
        ":{PUBLISHED} - [0:0]\n-F DOCKER-USER\n-F {PUBLISHED}\n"
    ));
    for l in lines.iter().filter(|l| !l.starts_with(RAW)) {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&format!(
        "COMMIT\n*raw\n:{METADATA} - [0:0]\n-F {METADATA}\n"
    ));
    let jump = format!("-A PREROUTING -j {METADATA}");
    for l in lines.iter().filter_map(|l| l.strip_prefix(RAW)) {
        if l != jump {
            s.push_str(l);
            s.push('\n');
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// Shell lines that load the rules and put the jump to the metadata chain
/// in place once.
pub(crate) fn load() -> String {
    format!(
        "iptables-restore -w --noflush {RULES_PATH} && \
         {{ iptables -w -t raw -C PREROUTING -j {METADATA} 2>/dev/null || \
         iptables -w -t raw -I PREROUTING -j {METADATA}; }}"
    )
}

/// The unit that loads the rules at boot. Ordered before docker.service:
/// Docker keeps a DOCKER-USER chain it finds (it only adds a RETURN to an
/// empty one and its jump from FORWARD), also when it restarts, so no
/// published port is ever open before the rules are in force. ufw's
/// after.rules would be loaded only while ufw is enabled, and ufw's reload
/// rewrites what it declares. Stopping the unit (when the rules leave the
/// config) puts back what Docker had.
pub(crate) fn unit() -> String {
    let reset = format!(
        "iptables -w -t raw -D PREROUTING -j {METADATA}; iptables -w -t raw -F {METADATA}; \
         iptables -w -t raw -X {METADATA}; iptables -w -F DOCKER-USER; \
         iptables -w -A DOCKER-USER -j RETURN; iptables -w -F {PUBLISHED}; \
         iptables -w -X {PUBLISHED}; true"
    );
    format!(
        "# Managed by tidekeeper.\n[Unit]\n\
         Description=Published container ports admitted as the firewall rules say\n\
         Before=docker.service\nAfter=ufw.service\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c '{}'\nExecStop=/bin/sh -c '{reset}'\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        load()
    )
}

/// The files a host that runs Docker gets with its firewall: (path, text).
pub(crate) fn files(fw: &Rules) -> [(String, String); 2] {
    [
        (RULES_PATH.to_string(), rules_file(fw)),
        (UNIT_PATH.to_string(), unit()),
    ]
}

/// Probe: the chains' rules as [`Tag::ContainerRule`](crate::engine::sh::Tag)
/// records, when iptables is there.
pub(crate) fn probe() -> String {
    let tag = crate::engine::sh::Tag::ContainerRule;
    format!(
        "if command -v iptables >/dev/null; then \
         {{ iptables -w -S DOCKER-USER; iptables -w -S {PUBLISHED}; }} 2>/dev/null | sed -n 's/^-A /{tag}\\t-A /p'; \
         iptables -w -t raw -S 2>/dev/null | grep -e '^-A {METADATA} ' -e ' -j {METADATA}$' | sed 's/^/{tag}\\t{RAW}/'; fi\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::sh_n;

    fn rule(from: &str, port: Option<u16>, proto: &str, action: RuleAction) -> FirewallRule {
        FirewallRule {
            action,
            from_port: port,
            to_port: port,
            proto: proto.into(),
            from: from.into(),
            interface: None,
            comment: None,
        }
    }

    fn fw(rules: Vec<FirewallRule>) -> Rules {
        Rules {
            incoming: Policy::Deny,
            outgoing: Policy::Allow,
            routed: None,
            metadata_from_containers: None,
            docker: true,
            rules,
            sites: vec![],
            origin: Default::default(),
        }
    }

    #[test]
    fn published_ports_follow_the_rules_in_iptables_own_form() {
        let f = fw(vec![
            rule("10.1.2.3/8", Some(8080), "tcp", RuleAction::Allow),
            rule("198.51.100.7", None, "any", RuleAction::Allow),
            rule("any", Some(53), "any", RuleAction::Deny),
            rule("2001:db8::/32", Some(443), "tcp", RuleAction::Allow),
        ]);
        let l = lines(&f);
        let published: Vec<&str> = l
            .iter()
            .filter(|l| l.starts_with("-A tidekeeper-published"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            published,
            [
                "-A tidekeeper-published -m conntrack ! --ctstate DNAT -j DROP",
                "-A tidekeeper-published -s 10.0.0.0/8 -p tcp -m conntrack --ctorigdstport 8080 -j RETURN",
                "-A tidekeeper-published -s 198.51.100.7/32 -j RETURN",
                "-A tidekeeper-published -p tcp -m conntrack --ctorigdstport 53 -j DROP",
                "-A tidekeeper-published -p udp -m conntrack --ctorigdstport 53 -j DROP",
                "-A tidekeeper-published -j DROP",
            ]
        );
        assert!(l.contains(
            &"-t raw -A tidekeeper-metadata -d 169.254.169.254/32 -i docker0 -j DROP".to_string()
        ));
        let file = rules_file(&f);
        assert!(file.contains(
            "*raw\n:tidekeeper-metadata - [0:0]\n-F tidekeeper-metadata\n-A tidekeeper-metadata"
        ));
        assert!(
            !file.contains("PREROUTING"),
            "the jump is put in once, not by restore"
        );
        let open = Rules {
            metadata_from_containers: Some(Policy::Allow),
            ..f
        };
        assert!(!lines(&open).iter().any(|l| l.contains("169.254")));
        sh_n(&probe());
        sh_n(&load());
    }
}
