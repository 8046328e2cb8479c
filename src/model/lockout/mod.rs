//! The lockout check: would a host's desired state keep tidekeeper's own SSH
//! connection out — its firewall (ufw rules, cloud firewall), a fail2ban
//! jail that does not ignore tidekeeper ([`fail2ban`]), or SSH only through
//! a tunnel nobody keeps up, also across a reboot job ([`tunnel`])? Where
//! tidekeeper connects from is the jump host's address (`ssh.via`), or the
//! controller's stated ranges (`defaults.ssh.from`). Pure; run when the
//! config is loaded, so nothing that would shut tidekeeper out is ever
//! applied. What breaks without shutting tidekeeper out (a router whose ufw
//! drops forwarded packets, [`forward`]) is a warning.

use super::check::Net;
use super::desired::{Fleet, Host, Jump, Policy, Resource, RuleAction, SshAddress};
use super::diag::Diagnostic;

mod fail2ban;
mod forward;
mod tunnel;

/// An inbound rule as both firewalls have it: sources, ports (None: all),
/// protocol.
type Rule<'a> = (Vec<String>, Option<(u16, u16)>, &'a str);

/// Where tidekeeper's connections to a host come from.
enum Sources {
    Known(Vec<Net>),
    /// Not stated, or not known before the provider assigns it; why.
    Unknown(String),
}

impl Sources {
    fn text(&self) -> String {
        match self {
            Sources::Known(n) => n.iter().map(short).collect::<Vec<_>>().join(", "),
            Sources::Unknown(why) => why.clone(),
        }
    }
}

fn short(n: &Net) -> String {
    let full = if n.addr.is_ipv4() { 32 } else { 128 };
    if n.prefix == full {
        n.addr.to_string()
    } else {
        n.to_string()
    }
}

fn sources(fleet: &Fleet, h: &Host) -> Sources {
    match &h.ssh.via {
        None if h.ssh.from.is_empty() => {
            Sources::Unknown("tidekeeper's own address is not stated (defaults.ssh.from)".into())
        }
        None => Sources::Known(h.ssh.from.iter().filter_map(|c| Net::parse(c)).collect()),
        Some(Jump::Address { address, .. }) => match Net::parse(address) {
            Some(n) => Sources::Known(vec![n]),
            None => Sources::Unknown(format!("the jump host {address} is a name, not an address")),
        },
        Some(Jump::Host(b)) => {
            let Some(jump) = fleet.host(b) else {
                return Sources::Unknown(format!("the jump host {b} is unknown"));
            };
            // Through a private network the bastion's address there is the
            // source; otherwise its public one.
            let addr = if h.ssh.address == SshAddress::Private {
                jump.private_address.as_ref()
            } else {
                jump.address.as_ref()
            };
            match addr.and_then(|a| Net::parse(a)) {
                Some(n) => Sources::Known(vec![n]),
                None => Sources::Unknown(format!(
                    "the address of the jump host {b} is not known before its server is created"
                )),
            }
        }
    }
}

/// Do the rules (`(from, port range, proto)`) let every source in?
fn admitted(rules: &[Rule<'_>], port: u16, src: &Sources) -> bool {
    let open = |r: &&Rule<'_>| {
        matches!(r.2, "tcp" | "any") && r.1.is_none_or(|(a, b)| a <= port && port <= b)
    };
    let nets = |r: &Rule<'_>| -> Vec<Net> { r.0.iter().filter_map(|f| Net::parse(f)).collect() };
    match src {
        Sources::Known(srcs) => srcs.iter().all(|s| {
            rules
                .iter()
                .filter(open)
                .any(|r| nets(r).iter().any(|n| n.contains(s)))
        }),
        // Unknown: only a rule open to the whole internet is sure to let it in.
        Sources::Unknown(_) => rules
            .iter()
            .filter(open)
            .any(|r| nets(r).iter().any(|n| n.prefix == 0)),
    }
}

fn allowed_from(rules: &[Rule<'_>], port: u16) -> String {
    let mut from: Vec<String> = rules
        .iter()
        .filter(|r| matches!(r.2, "tcp" | "any") && r.1.is_none_or(|(a, b)| a <= port && port <= b))
        .flat_map(|r| r.0.clone())
        .collect();
    from.dedup();
    if from.is_empty() {
        "nowhere".into()
    } else {
        format!("only from {}", from.join(", "))
    }
}

/// A diagnostic per way a host's desired state would shut tidekeeper out:
/// its firewalls, fail2ban, an SSH path through an unmanaged tunnel.
pub(crate) fn check(fleet: &Fleet) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for h in &fleet.hosts {
        if h.address.is_none() && h.server.is_none() {
            continue; // local hosts are not reached over SSH
        }
        let src = sources(fleet, h);
        firewalls(h, &src, &mut out);
        out.extend(jump_egress(fleet, h));
        out.extend(fail2ban::check(h, &src));
        out.extend(tunnel::check(fleet, h, &src));
    }
    out
}

/// Warnings: what would break on a host without locking tidekeeper out
/// (a router whose ufw drops forwarded packets).
pub(crate) fn warnings(fleet: &Fleet) -> Vec<Diagnostic> {
    fleet.hosts.iter().filter_map(forward::check).collect()
}

/// A jump host (`ssh.via`) whose outbound rules (EC2 `server.egress`) do
/// not let it open SSH to `h`: its security group would cut tidekeeper off
/// from `h`, though not from the jump host itself (replies always leave).
fn jump_egress(fleet: &Fleet, h: &Host) -> Option<Diagnostic> {
    let Some(Jump::Host(b)) = &h.ssh.via else {
        return None;
    };
    let jump = fleet.host(b)?;
    let ec2 = jump.server.as_ref()?.ec2.as_ref()?;
    let egress = ec2.egress.as_ref()?;
    let rules: Vec<Rule> = egress
        .iter()
        .map(|r| {
            (
                r.from.clone(),
                Some((r.from_port, r.to_port)),
                r.proto.as_str(),
            )
        })
        .collect();
    let addr = if h.ssh.address == SshAddress::Private {
        h.private_address.as_ref()
    } else {
        h.address.as_ref()
    };
    let to = match addr.and_then(|a| Net::parse(a)) {
        Some(n) => Sources::Known(vec![n]),
        None => Sources::Unknown(format!(
            "the address of {} is not known before its server is created",
            h.name
        )),
    };
    let port = h.ssh.port;
    if admitted(&rules, port, &to) {
        return None;
    }
    let origin = ec2.egress_origin.clone().unwrap_or_default();
    Some(
        origin
            .error(
                "lockout",
                format!(
                    "{b}: its outbound rules let it open SSH (port {port}) {}, but tidekeeper reaches {} through it{}: applying them would lock tidekeeper out of {}",
                    allowed_from(&rules, port).replacen("from", "to", 1),
                    h.name,
                    match &to {
                        Sources::Known(_) => format!(" at {}", to.text()),
                        Sources::Unknown(why) => format!(", and {why}"),
                    },
                    h.name
                ),
            )
            .with_help(format!(
                "add an outbound rule to {b}'s server.egress: {{port: \"{port}\", to: [{}]}}",
                match &to {
                    Sources::Known(_) => to.text(),
                    Sources::Unknown(_) => "THE_SUBNET_CIDR".into(),
                }
            )),
    )
}

/// An error per firewall (ufw, cloud) of `h` that keeps `src` out.
fn firewalls(h: &Host, src: &Sources, out: &mut Vec<Diagnostic>) {
    let port = h.ssh.port;
    let mut push = |origin: &super::diag::Origin, what: &str, rules: &[Rule<'_>]| {
        let d = origin
                .error(
                    "lockout",
                    match src {
                        Sources::Known(_) => format!(
                            "{}: {what} lets SSH (port {port}) in {}, but tidekeeper connects from {}: applying it would lock tidekeeper out",
                            h.name,
                            allowed_from(rules, port),
                            src.text()
                        ),
                        Sources::Unknown(why) => format!(
                            "{}: {what} lets SSH (port {port}) in {}, but {why}: applying it could lock tidekeeper out",
                            h.name,
                            allowed_from(rules, port),
                        ),
                    },
                )
                .with_help(format!(
                    "allow port {port} from where tidekeeper connects, reach the host through a jump host the firewall admits (ssh.via), or state where tidekeeper connects from (defaults.ssh.from)"
                ));
        if !out
            .iter()
            .any(|o| o.file == d.file && o.line == d.line && o.message == d.message)
        {
            out.push(d);
        }
    };
    for r in &h.resources {
        let Resource::Firewall(fw) = r else { continue };
        if fw.incoming == Policy::Allow {
            continue;
        }
        let rules: Vec<Rule> = fw
            .rules
            .iter()
            .filter(|r| matches!(r.action, RuleAction::Allow | RuleAction::Limit))
            .map(|r| {
                let from = if r.from == "any" {
                    vec!["0.0.0.0/0".to_string(), "::/0".to_string()]
                } else {
                    vec![r.from.clone()]
                };
                let ports = r.from_port.map(|a| (a, r.to_port.unwrap_or(a)));
                (from, ports, r.proto.as_str())
            })
            .collect();
        if !admitted(&rules, port, src) {
            push(&fw.origin, "its ufw firewall", &rules);
        }
    }
    // A cloud firewall filters public traffic only: a host reached on
    // its private network is not behind it. An EC2 security group filters
    // every packet the instance gets, private ones too.
    let ec2 = h.provider == crate::model::desired::ProviderKind::Ec2;
    if let Some(s) = &h.server
        && !s.firewall.is_empty()
        && (h.ssh.address == SshAddress::Public || ec2)
    {
        let rules: Vec<Rule> = s
            .firewall
            .iter()
            .map(|p| {
                (
                    p.from.clone(),
                    Some((p.from_port, p.to_port)),
                    p.proto.as_str(),
                )
            })
            .collect();
        if !admitted(&rules, port, src) {
            let origin = s
                .firewall_origin
                .clone()
                .unwrap_or_else(|| h.origin.clone());
            let what = if ec2 {
                "its security group"
            } else {
                "its cloud firewall"
            };
            push(&origin, what, &rules);
        }
    }
}

#[cfg(test)]
mod tests;
