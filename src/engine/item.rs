//! A host's desired state flattened into the items the probe, planner and
//! applier work on. Users bring their `authorized_keys` file and its
//! directory as ordinary path items, so those get diffs, backups and atomic
//! writes like every other file.

use std::collections::BTreeMap;

use crate::change::ResourceKind;
use crate::digest::sha256_hex;
use crate::model::desired::{
    CommandResource, Content, Firewall, FirewallRule, Handler, HealthCheck, Host, PackageState,
    Policy, Resource, RuleAction, ServiceState,
};

#[derive(Debug, Clone)]
pub enum Item {
    File(FileItem),
    Dir {
        path: String,
        mode: Option<u32>,
        owner: Option<String>,
        group: Option<String>,
    },
    Link {
        path: String,
        target: String,
    },
    Absent {
        path: String,
    },
    Package {
        name: String,
        state: PackageState,
    },
    Group {
        name: String,
        gid: Option<u32>,
    },
    User(UserItem),
    Service {
        name: String,
        enabled: Option<bool>,
        state: Option<ServiceState>,
    },
    Firewall(Firewall),
    Sysctl {
        key: String,
        value: String,
    },
    Command(CommandResource),
    /// A compose project: its files are File items under `dir`.
    Stack {
        name: String,
        dir: String,
        /// Checksum over every file of the stack.
        hash: String,
        /// The compose file's name in `dir`, and its services.
        compose: Option<String>,
        services: BTreeMap<String, super::compose::Service>,
        health: Vec<HealthCheck>,
        health_timeout_secs: u64,
    },
}

#[derive(Debug, Clone)]
pub struct FileItem {
    pub path: String,
    pub content: Content,
    pub sha256: String,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub validate: Option<String>,
    pub notify: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UserItem {
    pub name: String,
    pub uid: Option<u32>,
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: String,
    pub system: bool,
}

impl Item {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Item::File(_) => ResourceKind::File,
            Item::Dir { .. } => ResourceKind::Directory,
            Item::Link { .. } => ResourceKind::Symlink,
            Item::Absent { .. } => ResourceKind::Absent,
            Item::Package { .. } => ResourceKind::Package,
            Item::Group { .. } => ResourceKind::Group,
            Item::User(_) => ResourceKind::User,
            Item::Service { .. } => ResourceKind::Service,
            Item::Firewall(_) => ResourceKind::Firewall,
            Item::Sysctl { .. } => ResourceKind::Sysctl,
            Item::Command(_) => ResourceKind::Command,
            Item::Stack { .. } => ResourceKind::Stack,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Item::File(f) => &f.path,
            Item::Dir { path, .. } | Item::Link { path, .. } | Item::Absent { path } => path,
            Item::Package { name, .. } | Item::Group { name, .. } | Item::Service { name, .. } => {
                name
            }
            Item::User(u) => &u.name,
            Item::Firewall(_) => "ufw",
            Item::Sysctl { key, .. } => key,
            Item::Command(c) => &c.name,
            Item::Stack { name, .. } => name,
        }
    }

    /// Items whose paths live on the host's filesystem (subject to a local root).
    pub fn path(&self) -> Option<&str> {
        match self {
            Item::File(f) => Some(&f.path),
            Item::Dir { path, .. } | Item::Link { path, .. } | Item::Absent { path } => Some(path),
            _ => None,
        }
    }
}

/// Home directory a user gets when none is configured.
pub fn default_home(name: &str) -> String {
    if name == "root" {
        "/root".into()
    } else {
        format!("/home/{name}")
    }
}

/// Flatten a host's resources into items, in the order they are applied:
/// packages, groups, users, directories (parents first), files and links,
/// sysctl, firewall, services, commands. Stacks are handled elsewhere.
pub fn items(host: &Host) -> Vec<Item> {
    let mut packages = Vec::new();
    let mut groups = Vec::new();
    let mut users = Vec::new();
    let mut dirs = Vec::new();
    let mut paths = Vec::new();
    let mut rest = Vec::new();
    for r in &host.resources {
        match r {
            Resource::Package { name, state, .. } => packages.push(Item::Package {
                name: name.clone(),
                state: *state,
            }),
            Resource::Group { name, gid, .. } => groups.push(Item::Group {
                name: name.clone(),
                gid: *gid,
            }),
            Resource::User(u) => {
                let home = u.home.clone().unwrap_or_else(|| default_home(&u.name));
                if !u.authorized_keys.is_empty() {
                    let mut text = String::from("# Managed by tidekeeper.\n");
                    for k in &u.authorized_keys {
                        text.push_str(k.trim());
                        text.push('\n');
                    }
                    dirs.push(Item::Dir {
                        path: format!("{home}/.ssh"),
                        mode: Some(0o700),
                        owner: Some(u.name.clone()),
                        group: None,
                    });
                    paths.push(Item::File(FileItem {
                        path: format!("{home}/.ssh/authorized_keys"),
                        sha256: sha256_hex(text.as_bytes()),
                        content: Content {
                            bytes: text.into_bytes(),
                            sensitive: false,
                        },
                        mode: Some(0o600),
                        owner: Some(u.name.clone()),
                        group: None,
                        validate: None,
                        notify: vec![],
                    }));
                }
                users.push(Item::User(UserItem {
                    name: u.name.clone(),
                    uid: u.uid,
                    groups: u.groups.clone(),
                    shell: u.shell.clone(),
                    home,
                    system: u.system,
                }));
            }
            Resource::Directory(d) => dirs.push(Item::Dir {
                path: d.path.clone(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            }),
            Resource::File(f) => paths.push(Item::File(FileItem {
                path: f.path.clone(),
                sha256: sha256_hex(&f.content.bytes),
                content: f.content.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
                validate: f.validate.clone(),
                notify: f.notify.clone(),
            })),
            Resource::Symlink { path, target, .. } => paths.push(Item::Link {
                path: path.clone(),
                target: target.clone(),
            }),
            Resource::Absent { path, .. } => paths.push(Item::Absent { path: path.clone() }),
            Resource::Sysctl { key, value, .. } => rest.push((
                0,
                Item::Sysctl {
                    key: key.clone(),
                    value: value.clone(),
                },
            )),
            Resource::Firewall(fw) => rest.push((1, Item::Firewall(fw.clone()))),
            Resource::Service(s) => rest.push((
                2,
                Item::Service {
                    name: unit_name(&s.name),
                    enabled: s.enabled,
                    state: s.state,
                },
            )),
            Resource::Command(c) => rest.push((3, Item::Command(c.clone()))),
            Resource::Stack(st) => {
                let dir = st.dir.trim_end_matches('/').to_string();
                let mut all = Vec::new();
                dirs.push(Item::Dir {
                    path: dir.clone(),
                    mode: Some(0o750),
                    owner: None,
                    group: None,
                });
                for (rel, content) in &st.files {
                    let sha = sha256_hex(&content.bytes);
                    all.extend_from_slice(rel.as_bytes());
                    all.extend_from_slice(sha.as_bytes());
                    paths.push(Item::File(FileItem {
                        path: format!("{dir}/{rel}"),
                        sha256: sha,
                        content: content.clone(),
                        mode: Some(if content.sensitive { 0o600 } else { 0o644 }),
                        owner: None,
                        group: None,
                        validate: None,
                        notify: vec![],
                    }));
                }
                let compose = super::compose::FILES
                    .iter()
                    .find(|f| st.files.contains_key(**f))
                    .map(|f| f.to_string());
                let services = compose
                    .as_ref()
                    .and_then(|f| super::compose::services(&st.files[f].bytes))
                    .unwrap_or_default();
                rest.push((
                    4,
                    Item::Stack {
                        name: st.name.clone(),
                        dir,
                        hash: sha256_hex(&all)[..16].to_string(),
                        compose,
                        services,
                        health: st.health.clone(),
                        health_timeout_secs: st.health_timeout_secs,
                    },
                ));
            }
        }
    }
    dirs.sort_by_key(|d| d.id().matches('/').count());
    rest.sort_by_key(|(rank, _)| *rank);
    let mut out = packages;
    out.extend(groups);
    out.extend(users);
    out.extend(dirs);
    out.extend(paths);
    out.extend(rest.into_iter().map(|(_, i)| i));
    out
}

/// `ssh` → `ssh.service`; names with a unit suffix stay as they are.
pub fn unit_name(name: &str) -> String {
    const SUFFIXES: [&str; 6] = [
        ".service", ".timer", ".socket", ".target", ".mount", ".path",
    ];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// What a handler does, as a shell command.
pub fn handler_command(h: &Handler) -> String {
    use crate::model::desired::HandlerAction::*;
    use crate::transport::shell_quote;
    match &h.action {
        Restart(unit) => format!("systemctl restart {}", shell_quote(&unit_name(unit))),
        Reload(unit) => format!("systemctl reload {}", shell_quote(&unit_name(unit))),
        Run(cmd) => format!("sh -c {}", shell_quote(cmd)),
    }
}

/// ufw's own words for a rule, as `ufw show added` prints it (minus `ufw `).
/// ufw shows a single-host network (`/32`, `/128`) as the bare address:
/// write it that way so what is written and what is read back compare equal.
fn ufw_source(from: &str) -> &str {
    match from.rsplit_once('/') {
        Some((addr, "32")) if addr.contains('.') => addr,
        Some((addr, "128")) if addr.contains(':') => addr,
        _ => from,
    }
}

pub fn ufw_rule_args(r: &FirewallRule) -> String {
    let action = match r.action {
        RuleAction::Allow => "allow",
        RuleAction::Deny => "deny",
        RuleAction::Reject => "reject",
        RuleAction::Limit => "limit",
    };
    let port = match (r.from_port, r.to_port) {
        (Some(a), Some(b)) if a != b => Some(format!("{a}:{b}")),
        (Some(a), _) => Some(a.to_string()),
        _ => None,
    };
    let mut s = action.to_string();
    let any_from = r.from == "any";
    match (&port, any_from) {
        (Some(p), true) => {
            s.push(' ');
            s.push_str(p);
            if r.proto != "any" {
                s.push('/');
                s.push_str(&r.proto);
            }
        }
        (Some(p), false) => {
            s.push_str(&format!(" from {} to any port {p}", ufw_source(&r.from)));
            if r.proto != "any" {
                s.push_str(&format!(" proto {}", r.proto));
            }
        }
        (None, _) => {
            s.push_str(&format!(" from {}", ufw_source(&r.from)));
            if r.proto != "any" {
                s.push_str(&format!(" proto {}", r.proto));
            }
        }
    }
    if let Some(c) = &r.comment {
        s.push_str(&format!(" comment '{}'", c.replace('\'', "")));
    }
    s
}

/// Parse one line of `ufw show added` back into a rule (None for forms
/// tidekeeper does not write; those are reported as unmanaged).
pub fn parse_ufw_rule(line: &str) -> Option<FirewallRule> {
    let line = line.trim().strip_prefix("ufw ")?;
    let (main, comment) = match line.find(" comment '") {
        Some(i) => (
            &line[..i],
            Some(line[i + 10..].trim_end_matches('\'').to_string()),
        ),
        None => (line, None),
    };
    let toks: Vec<&str> = main.split_whitespace().collect();
    let action = match *toks.first()? {
        "allow" => RuleAction::Allow,
        "deny" => RuleAction::Deny,
        "reject" => RuleAction::Reject,
        "limit" => RuleAction::Limit,
        _ => return None,
    };
    let mut rule = FirewallRule {
        action,
        from_port: None,
        to_port: None,
        proto: "any".into(),
        from: "any".into(),
        comment,
    };
    let parse_port = |p: &str| -> Option<(u16, u16)> {
        match p.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let a = p.parse().ok()?;
                Some((a, a))
            }
        }
    };
    if toks.get(1) == Some(&"from") {
        rule.from = toks.get(2)?.to_string();
        let mut i = 3;
        while i < toks.len() {
            match toks[i] {
                "to" if toks.get(i + 1) == Some(&"any") => i += 2,
                "port" => {
                    let (a, b) = parse_port(toks.get(i + 1)?)?;
                    (rule.from_port, rule.to_port) = (Some(a), Some(b));
                    i += 2;
                }
                "proto" => {
                    rule.proto = toks.get(i + 1)?.to_string();
                    i += 2;
                }
                _ => return None,
            }
        }
    } else {
        let spec = toks.get(1)?;
        if toks.len() != 2 {
            return None;
        }
        let (port, proto) = match spec.split_once('/') {
            Some((p, q)) => (p, q.to_string()),
            None => (*spec, "any".to_string()),
        };
        let (a, b) = parse_port(port)?;
        (rule.from_port, rule.to_port, rule.proto) = (Some(a), Some(b), proto);
    }
    Some(rule)
}

pub fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Allow => "allow",
        Policy::Deny => "deny",
        Policy::Reject => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufw_rules_round_trip_through_their_printed_form() {
        // Lines as `ufw show added` printed them on a test host.
        for line in [
            "ufw allow 22/tcp comment 'ssh'",
            "ufw allow from 10.0.0.0/8 to any port 80 proto tcp",
            "ufw allow 53/udp",
            "ufw deny 23",
            "ufw allow 1000:2000/tcp",
            "ufw allow from 192.168.1.0/24",
        ] {
            let rule = parse_ufw_rule(line).unwrap_or_else(|| panic!("parse {line}"));
            assert_eq!(format!("ufw {}", ufw_rule_args(&rule)), line);
        }
        assert!(parse_ufw_rule("ufw route allow in on eth0").is_none());
    }

    /// Regression: a rule `from: 198.51.100.7/32` was written as such, read
    /// back from ufw as the bare address, and planned again on every run.
    #[test]
    fn a_single_host_network_compares_equal_to_the_address_ufw_shows() {
        for (config, shown) in [
            (
                "198.51.100.7/32",
                "ufw allow from 198.51.100.7 to any port 22 proto tcp",
            ),
            (
                "2001:db8::1/128",
                "ufw allow from 2001:db8::1 to any port 22 proto tcp",
            ),
        ] {
            let want = FirewallRule {
                action: RuleAction::Allow,
                from_port: Some(22),
                to_port: Some(22),
                proto: "tcp".into(),
                from: config.into(),
                comment: None,
            };
            let have = parse_ufw_rule(shown).unwrap();
            assert_eq!(ufw_rule_args(&want), ufw_rule_args(&have));
        }
    }
}
