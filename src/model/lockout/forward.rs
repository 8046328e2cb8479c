//! ufw's forward policy on a host that forwards packets for others. ufw
//! drops forwarded packets unless told otherwise (`routed: allow`), so on a
//! host that routes for VMs, LXD/Incus guests, containers Docker does not
//! route, or VPN clients, their network breaks. Docker with its defaults
//! (and libvirt) put their own FORWARD rules ahead of ufw's: not a break.
//! The SSH session tidekeeper opens ends on the host itself, never
//! forwarded, so this cannot lock tidekeeper out: a warning, not an error.

use crate::model::desired::{Host, PackageState, Resource};
use crate::model::diag::{Diagnostic, Origin};

/// sysctls that make a host forward packets.
const FORWARDING: [&str; 3] = [
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv6.conf.all.forwarding",
];

/// Packages whose guests' traffic crosses the host's FORWARD chain with no
/// accept rule of their own (LXD's and Incus's documentation tell ufw users
/// to add route rules; Proxmox's routed and NAT bridges likewise).
const HYPERVISORS: [&str; 3] = ["lxd", "incus", "proxmox-ve"];

/// Why the host forwards packets, and where the config says so.
fn forwards(h: &Host) -> Option<(&Origin, String)> {
    h.resources.iter().find_map(|r| match r {
        Resource::Sysctl { key, value, origin }
            if FORWARDING.contains(&key.as_str()) && value.trim() == "1" =>
        {
            Some((origin, format!("sysctl {key} = 1 makes it forward packets")))
        }
        Resource::Package {
            name,
            state: PackageState::Present | PackageState::Latest,
            origin,
        } if HYPERVISORS.contains(&name.as_str()) => Some((
            origin,
            format!("package {name} routes its guests' traffic through it"),
        )),
        Resource::File(f) if f.path == "/etc/docker/daemon.json" && !f.content.sensitive => {
            let json: serde_json::Value = serde_json::from_slice(&f.content.bytes).ok()?;
            (json.get("iptables") == Some(&serde_json::Value::Bool(false))).then(|| {
                (
                    &f.origin,
                    "Docker runs with \"iptables\": false (/etc/docker/daemon.json), so it adds no forwarding rules of its own".to_string(),
                )
            })
        }
        _ => None,
    })
}

/// A warning when a host forwards packets for others while its ufw drops
/// them by default; a `routed:` policy stated either way silences it.
pub(super) fn check(h: &Host) -> Option<Diagnostic> {
    let fw = h.resources.iter().find_map(|r| match r {
        Resource::Firewall(fw) => Some(fw),
        _ => None,
    })?;
    if fw.routed.is_some() {
        return None;
    }
    let (origin, why) = forwards(h)?;
    Some(
        origin
            .error(
                "forward-policy",
                format!(
                    "{}: {why}, but its ufw firewall drops forwarded packets (ufw's default routed policy is deny): the network of what it routes for breaks",
                    h.name
                ),
            )
            .with_help(
                "set `routed: allow` under `firewall:` (ufw default allow routed), or `routed: deny` if dropping them is meant; this cannot lock tidekeeper out, so it is a warning",
            ),
    )
}
