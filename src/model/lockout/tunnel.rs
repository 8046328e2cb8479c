//! SSH that reaches a host only through a tunnel (Tailscale, WireGuard,
//! ZeroTier): when the tunnel's daemon stops, or does not start after a
//! reboot, nothing reaches the host, and the lockout guard cannot help (it
//! covers changes tidekeeper applies, not a daemon dying or a reboot). So
//! the config must keep the tunnel up (its package and a running service)
//! or check it; a host with a reboot job must start it at boot.

use super::Sources;
use crate::model::check::Net;
use crate::model::desired::{
    FirewallRule, Fleet, HealthCheck, Host, JobKind, PackageState, Policy, RebootPolicy, Resource,
    RuleAction, RuleSite, ServiceState, SshAddress,
};
use crate::model::diag::Diagnostic;

/// A tunnel and what keeps it up.
struct Tunnel {
    /// How the user knows it: `tailscale0 (Tailscale)`.
    via: String,
    /// Packages that provide it (any one will do).
    packages: &'static [&'static str],
    /// The systemd unit that brings it up.
    unit: String,
}

/// Tailscale's addresses: a source inside them comes through the tailnet.
const TAILNET: [&str; 2] = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"];

fn in_tailnet(n: &Net) -> bool {
    TAILNET
        .iter()
        .filter_map(|t| Net::parse(t))
        .any(|t| t.contains(n))
}

fn tailscale(via: String) -> Tunnel {
    Tunnel {
        via,
        packages: &["tailscale"],
        unit: "tailscaled".into(),
    }
}

/// What makes SSH depend on the tunnel: a rule, or the address tidekeeper
/// connects to. Where it is written, its `lockout_ok`, and the way around.
struct Cause {
    site: RuleSite,
    /// How to reach the host without the tunnel.
    bypass: &'static str,
    /// Where `lockout_ok` goes.
    ack_on: &'static str,
}

/// The tunnel behind an interface, by the names its tools give it. Other
/// interfaces (eth1, a provider's private network) need no daemon.
fn tunnel_of(iface: &str) -> Option<Tunnel> {
    let (name, packages, unit) = if iface.starts_with("tailscale") {
        ("Tailscale", &["tailscale"][..], "tailscaled".to_string())
    } else if iface.starts_with("wg") {
        (
            "WireGuard",
            &["wireguard-tools", "wireguard"][..],
            format!("wg-quick@{iface}"),
        )
    } else if iface.starts_with("zt") {
        (
            "ZeroTier",
            &["zerotier-one"][..],
            "zerotier-one".to_string(),
        )
    } else {
        return None;
    };
    Some(Tunnel {
        via: format!("{iface} ({name})"),
        packages,
        unit,
    })
}

/// The tunnel a rule lets SSH in through: its interface's, or Tailscale's
/// when it admits only tailnet addresses. None: not through a tunnel.
fn rule_tunnel(r: &FirewallRule) -> Option<Tunnel> {
    if let Some(i) = &r.interface {
        return tunnel_of(i);
    }
    let from = Net::parse(&r.from)?;
    in_tailnet(&from).then(|| tailscale(format!("the tailnet's addresses ({}, Tailscale)", r.from)))
}

/// Does the rule let SSH in from (some of) where tidekeeper connects?
fn admits(r: &FirewallRule, port: u16, src: &Sources) -> bool {
    let opens = matches!(r.action, RuleAction::Allow | RuleAction::Limit)
        && matches!(r.proto.as_str(), "tcp" | "any")
        && r.from_port
            .is_none_or(|a| a <= port && port <= r.to_port.unwrap_or(a));
    let Some(from) = Net::parse(&r.from) else {
        return false;
    };
    opens
        && match src {
            Sources::Known(srcs) => r.from == "any" || srcs.iter().any(|s| from.contains(s)),
            Sources::Unknown(_) => r.from == "any" || r.interface.is_some(),
        }
}

/// The tunnel SSH depends on, and why: every ufw rule that lets tidekeeper
/// in goes through one, or tidekeeper connects to the host's tailnet
/// address (which exists only while tailscaled runs).
fn dependence(h: &Host, src: &Sources) -> Option<(Tunnel, Cause)> {
    if let Some((t, site)) = rule_dependence(h, src) {
        let cause = Cause {
            site: site.clone(),
            bypass: "also allow SSH from where tidekeeper connects without the tunnel (a rule without `interface:`)",
            ack_on: "this rule",
        };
        return Some((t, cause));
    }
    let addr = match h.ssh.address {
        SshAddress::Private => h.private_address.as_ref(),
        SshAddress::Public => h.address.as_ref(),
    }?;
    let net = Net::parse(addr).filter(in_tailnet)?;
    let site = RuleSite {
        origin: h.address_origin.clone().unwrap_or_else(|| h.origin.clone()),
        lockout_ok: h.lockout_ok.clone(),
    };
    let cause = Cause {
        site,
        bypass: "reach it at an address that needs no tunnel (`address:`)",
        ack_on: "the host",
    };
    Some((
        tailscale(format!("its tailnet address {} (Tailscale)", net.addr)),
        cause,
    ))
}

/// The tunnel the ufw rules make SSH depend on, and the rule.
fn rule_dependence<'a>(h: &'a Host, src: &Sources) -> Option<(Tunnel, &'a RuleSite)> {
    let port = h.ssh.port;
    for r in &h.resources {
        let Resource::Firewall(fw) = r else { continue };
        if fw.incoming == Policy::Allow {
            continue;
        }
        let mut through = None;
        for (i, rule) in fw.rules.iter().enumerate() {
            if !admits(rule, port, src) {
                continue;
            }
            match rule_tunnel(rule) {
                None => return None, // a way in that needs no tunnel
                Some(t) if through.is_none() => through = fw.sites.get(i).map(|s| (t, s)),
                Some(_) => {}
            }
        }
        return through;
    }
    None
}

/// Is the tunnel kept up by the config: (its package and a running or
/// enabled service, its service enabled at boot)?
fn kept_up(h: &Host, t: &Tunnel) -> (bool, bool) {
    let package = h.resources.iter().any(|r| {
        matches!(r, Resource::Package { name, state: PackageState::Present | PackageState::Latest, .. }
            if t.packages.contains(&name.as_str()))
    });
    let service = h.resources.iter().find_map(|r| match r {
        Resource::Service(s) if is_unit(&s.name, &t.unit) => Some(s),
        _ => None,
    });
    let running =
        service.is_some_and(|s| s.enabled == Some(true) || s.state == Some(ServiceState::Running));
    let at_boot = service.is_some_and(|s| s.enabled == Some(true));
    (package && running, package && at_boot)
}

fn is_unit(name: &str, unit: &str) -> bool {
    name == unit || name.strip_suffix(".service") == Some(unit)
}

/// Is the tunnel's unit among the health checks run for the host (its
/// jobs', its rollouts', its stacks')?
fn checked(fleet: &Fleet, h: &Host, t: &Tunnel) -> bool {
    let jobs = fleet
        .jobs
        .iter()
        .filter(|j| j.hosts.contains(&h.name))
        .flat_map(|j| &j.health);
    let rollout = fleet.settings.rollout.iter().flat_map(|r| &r.health);
    let group = h
        .group
        .as_ref()
        .and_then(|g| fleet.group_rollouts.get(g))
        .into_iter()
        .flat_map(|r| &r.health);
    let stacks = h.resources.iter().flat_map(|r| match r {
        Resource::Stack(s) => s.health.as_slice(),
        _ => &[],
    });
    jobs.chain(rollout)
        .chain(group)
        .chain(stacks)
        .any(|c| matches!(c, HealthCheck::Unit(u) if is_unit(u, &t.unit)))
}

/// An error when SSH reaches `h` only through a tunnel the config does not
/// keep up (or check), or, for a host a job reboots, does not start at boot.
pub(super) fn check(fleet: &Fleet, h: &Host, src: &Sources) -> Option<Diagnostic> {
    let (t, cause) = dependence(h, src)?;
    let site = &cause.site;
    if site.lockout_ok.is_some() {
        return None;
    }
    let bypass = cause.bypass;
    let (managed, at_boot) = kept_up(h, &t);
    let port = h.ssh.port;
    let (unit, package) = (&t.unit, t.packages[0]);
    let reboot = fleet.jobs.iter().find(|j| {
        j.hosts.contains(&h.name)
            && match &j.kind {
                JobKind::Upgrade { reboot, .. } => *reboot != RebootPolicy::Never,
                JobKind::Power { .. } => true,
                _ => false,
            }
    });
    let ack = format!(
        "or acknowledge the risk with `lockout_ok: \"<why>\"` on {}",
        cause.ack_on
    );
    if let Some(job) = reboot.filter(|_| !at_boot) {
        let message = format!(
            "{}: SSH (port {port}) reaches it only through {}, and job {} ({}) reboots it, but the config does not start {unit} at boot: after the reboot tidekeeper is locked out",
            h.name, t.via, job.name, job.origin
        );
        let help = format!(
            "manage the tunnel so it comes back after a reboot (package {package}; service {unit} with `enabled: true`), or {bypass}, {ack}"
        );
        return Some(site.origin.error("lockout", message).with_help(help));
    }
    if managed || checked(fleet, h, &t) {
        return None;
    }
    let message = format!(
        "{}: SSH (port {port}) reaches it only through {}, and the config neither keeps {unit} up (package {package}, service {unit}) nor checks it: when {unit} stops, tidekeeper is locked out",
        h.name, t.via
    );
    let help = format!(
        "{bypass}, or manage the tunnel (package {package}; service {unit} with `enabled: true` and `state: running`), {ack}"
    );
    Some(site.origin.error("lockout", message).with_help(help))
}
