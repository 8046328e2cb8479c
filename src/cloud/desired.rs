//! The servers a fleet asks for: one per `hetzner` or `lightsail` host, with
//! the ownership labels tidekeeper adds. Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ALLOW_DESTROY, FLEET, MANAGED_BY, MANAGED_BY_VALUE};
use crate::model::desired::{CloudPort, Ec2Server, Fleet, Host, ProviderKind, ServerNetwork};

#[derive(Debug, Clone, Serialize)]
pub struct DesiredServer {
    pub host: String,
    pub provider: ProviderKind,
    /// Hetzner server type or Lightsail bundle.
    pub size: String,
    /// Hetzner image or Lightsail blueprint.
    pub image: String,
    /// Hetzner location or Lightsail availability zone.
    pub location: String,
    /// The user's labels plus tidekeeper's ownership labels.
    pub labels: BTreeMap<String, String>,
    /// Empty: the provider's defaults are left alone.
    pub firewall: Vec<CloudPort>,
    pub static_ip: bool,
    pub ssh_keys: Vec<String>,
    #[serde(skip)]
    pub user_data: Option<String>,
    pub allow_destroy: bool,
    /// Private networks to be attached to (Hetzner).
    pub networks: Vec<ServerNetwork>,
    /// EC2: subnet, private address, root volume, termination protection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Server>,
}

/// The ownership labels for `fleet`.
pub fn ownership(fleet: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (FLEET.to_string(), fleet.to_string()),
    ])
}

/// The server behind a cloud host (None for `existing` and `local` hosts).
pub fn server(fleet: &str, host: &Host) -> Option<DesiredServer> {
    let s = host.server.as_ref()?;
    let (size, image, location) = match host.provider {
        ProviderKind::Hetzner => (&s.server_type, &s.image, &s.location),
        ProviderKind::Lightsail => (&s.bundle, &s.blueprint, &s.zone),
        ProviderKind::Ec2 => (&s.server_type, &s.image, &s.location),
        _ => return None,
    };
    let mut labels = s.labels.clone();
    labels.extend(ownership(fleet));
    if host.allow_destroy {
        labels.insert(ALLOW_DESTROY.into(), "true".into());
    }
    Some(DesiredServer {
        host: host.name.clone(),
        provider: host.provider,
        size: size.clone().unwrap_or_default(),
        image: image.clone().unwrap_or_default(),
        location: location.clone().unwrap_or_default(),
        labels,
        firewall: normalize(&s.firewall),
        static_ip: s.static_ip,
        ssh_keys: s.ssh_keys.clone(),
        user_data: s.user_data.clone(),
        allow_destroy: host.allow_destroy,
        networks: s.networks.clone(),
        ec2: s.ec2.clone().map(|mut e| {
            e.egress = e.egress.as_deref().map(normalize);
            e
        }),
    })
}

/// Every cloud server the fleet asks for.
pub fn servers(fleet: &Fleet) -> Vec<DesiredServer> {
    fleet
        .hosts
        .iter()
        .filter_map(|h| server(&fleet.name, h))
        .collect()
}

/// One protocol, port range and address range a rule set lets through.
pub type RuleAtom = (String, u16, u16, String);

/// What `rules` let through, one protocol, port range and address range at
/// a time (`any` is tcp and udp). Two rule sets admit the same traffic when
/// their atoms are equal, however a provider groups them: EC2 lists every
/// range of one port as one rule, a config may write them apart.
pub fn rule_atoms(rules: &[CloudPort]) -> std::collections::BTreeSet<RuleAtom> {
    let mut out = std::collections::BTreeSet::new();
    for r in rules {
        let protos: Vec<&str> = match r.proto.as_str() {
            "any" => vec!["tcp", "udp"],
            p => vec![p],
        };
        for p in protos {
            for c in &r.from {
                out.insert((p.to_string(), r.from_port, r.to_port, c.clone()));
            }
        }
    }
    out
}

/// Do `have` and `want` let the same traffic through?
pub fn same_rules(have: &[CloudPort], want: &[CloudPort]) -> bool {
    rule_atoms(have) == rule_atoms(want)
}

/// Rules in one canonical order, so equal rule sets compare equal.
pub fn normalize(ports: &[CloudPort]) -> Vec<CloudPort> {
    let mut out: Vec<CloudPort> = ports
        .iter()
        .map(|p| {
            let mut from = p.from.clone();
            from.sort();
            from.dedup();
            CloudPort {
                from_port: p.from_port,
                to_port: p.to_port,
                proto: p.proto.clone(),
                from,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.from_port, a.to_port, &a.proto, &a.from).cmp(&(
            b.from_port,
            b.to_port,
            &b.proto,
            &b.from,
        ))
    });
    out.dedup();
    out
}

/// A tcp rule and a udp rule for the same ports and sources read back as
/// one `any` rule, as the config writes it; the result is normalized.
pub fn fold_any(rules: Vec<CloudPort>) -> Vec<CloudPort> {
    let mut out: Vec<CloudPort> = Vec::new();
    for r in normalize(&rules) {
        let other = match r.proto.as_str() {
            "tcp" => "udp",
            "udp" => "tcp",
            _ => "",
        };
        if let Some(twin) = out.iter_mut().find(|x| {
            x.from_port == r.from_port
                && x.to_port == r.to_port
                && x.proto == other
                && x.from == r.from
        }) {
            twin.proto = "any".into();
            continue;
        }
        out.push(r);
    }
    normalize(&out)
}

/// `22/tcp from 0.0.0.0/0, ::/0` — how a rule reads in a plan.
pub fn describe_port(p: &CloudPort) -> String {
    let port = if p.from_port == p.to_port {
        p.from_port.to_string()
    } else {
        format!("{}-{}", p.from_port, p.to_port)
    };
    format!("{port}/{} from {}", p.proto, p.from.join(", "))
}

/// A `server.ssh_keys` entry that is a public key (to upload) rather than the
/// name of a key the provider has: the name tidekeeper gives it there,
/// `tk-<fleet>-<12 hex digits of its fingerprint>`.
pub fn uploaded_key_name(fleet: &str, entry: &str) -> Option<String> {
    let b64 = entry
        .split_whitespace()
        .nth(1)
        .filter(|_| crate::model::desired::is_public_key(entry))?;
    let fp = super::hostkey::fingerprint(b64)?;
    Some(format!("tk-{fleet}-{}", &fp[..12]))
}
