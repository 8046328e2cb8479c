//! Stage 5: each host file under hosts/ (one host, or a `count: N` group):
//! its server, its roles instantiated with its variables, known host keys.

use super::templates::is_template;
use super::*;

/// `hosts` for templates, from the host files as written: name, group,
/// index, provider, labels, `address` (existing hosts) and
/// `private_address` (a fixed address in the server's first network).
/// Addresses a provider assigns come from `known`; until the servers have
/// been seen they are null.
fn facts(files: &[(String, String, raw::HostFile)], known: &AddressBook) -> minijinja::Value {
    let mut out = serde_json::Map::new();
    for (stem, _, h) in files {
        let base = h
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| stem.clone());
        let labels: BTreeMap<&String, &String> =
            h.labels.iter().map(|(k, v)| (k, &v.value)).collect();
        let private = h
            .server
            .as_ref()
            .and_then(|s| s.networks.first())
            .and_then(|n| match &n.value {
                raw::NetworkRef::Fixed { ip, .. } => ip.clone(),
                raw::NetworkRef::Name(_) => None,
            });
        let members: Vec<(String, Option<u32>)> = match &h.count {
            Some(c) => (1..=c.value.min(1000))
                .map(|i| (format!("{base}-{i}"), Some(i)))
                .collect(),
            None => vec![(base.clone(), None)],
        };
        for (name, index) in members {
            let (public, private_known) = assigned(known, &name);
            let fixed = if h.count.is_some() {
                None
            } else {
                private.clone()
            };
            out.insert(
                name.clone(),
                serde_json::json!({
                    "name": name,
                    "group": h.count.as_ref().map(|_| base.clone()),
                    "index": index,
                    "provider": provider_name(h.provider.value),
                    "labels": labels,
                    "address": h.address.as_ref().map(|a| a.value.clone()).or(public),
                    "private_address": fixed.or(private_known),
                }),
            );
        }
    }
    minijinja::Value::from(minijinja::value::Serde(serde_json::Value::Object(out)))
}

/// The public and private address `book` has for host `name`.
fn assigned(book: &AddressBook, name: &str) -> (Option<String>, Option<String>) {
    book.get(name)
        .map(|a| (a.public.clone(), a.private.clone()))
        .unwrap_or_default()
}

/// A host's variables: the fleet's defaults, then each role's in the order
/// the host lists them, then the host's own; a later level replaces a key.
fn host_vars(
    fleet_vars: Option<&Vars>,
    roles: &[&RoleDef],
    h: &raw::HostFile,
) -> serde_json::Map<String, serde_json::Value> {
    let mut vars = serde_json::Map::new();
    for (k, v) in fleet_vars.into_iter().flatten() {
        vars.insert(k.clone(), v.clone());
    }
    for role in roles {
        for (k, v) in &role.vars {
            vars.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in &h.vars {
        vars.insert(k.clone(), v.clone());
    }
    vars
}

/// The hosts of the fleet as the host files define them.
pub(super) struct Loaded {
    pub hosts: Vec<Host>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub group_rollouts: BTreeMap<String, crate::model::desired::Rollout>,
    /// Host files that failed to parse: jobs naming them get no second error.
    pub broken_hosts: BTreeSet<String>,
}

impl Loader<'_> {
    /// Every host file under hosts/: the hosts (names unique across files),
    /// the `count: N` groups and their rollouts, and the files that did not
    /// parse.
    pub(super) fn all_hosts(
        &mut self,
        fleet_file: Option<&raw::FleetFile>,
        settings: Option<&Settings>,
        roles: &BTreeMap<String, RoleDef>,
        broken_roles: &BTreeSet<String>,
        templates: &Templates,
    ) -> Loaded {
        let host_files = self.yaml_files("hosts");
        if host_files.is_empty() && fleet_file.is_some() && !self.no_hosts_yet {
            self.err(
                Origin::file("hosts")
                    .error("no-hosts", "the config repo defines no hosts")
                    .with_help("add a file hosts/<name>.yaml; see docs/config.md"),
            );
        }
        let mut hosts: Vec<Host> = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut group_rollouts = BTreeMap::new();
        // Host files that failed to parse: jobs naming them get no second error.
        let mut broken_hosts: BTreeSet<String> = BTreeSet::new();
        // Where each host's own `ssh.via` is written (not inherited).
        let mut explicit_via: HashMap<String, Origin> = HashMap::new();
        let mut parsed = Vec::new();
        for (stem, path) in host_files {
            let Some(h) = self.parse::<raw::HostFile>(&path) else {
                broken_hosts.insert(stem);
                continue;
            };
            parsed.push((stem, path, h));
        }
        // Every host's facts first: a template of one host may list them all.
        self.host_facts = facts(&parsed, self.known);
        for (stem, path, h) in parsed {
            let Some(settings) = settings else { continue };
            let fleet_defaults = fleet_file.map(|f| &f.defaults.vars);
            let fleet_name = super::settings::settings_fleet_name(fleet_file);
            let first = hosts.len();
            for host in self.hosts(
                &stem,
                &path,
                &h,
                settings,
                fleet_defaults,
                &fleet_name,
                roles,
                broken_roles,
                templates,
            ) {
                if let Some(first) = names.get(&host.name) {
                    let d = host.origin.error("duplicate-host", format!("host name {:?} is already used by {first}", host.name))
                        .with_help("host names must be unique across hosts/; rename one (count: N groups are named <name>-1 … <name>-N)");
                    self.err(d);
                    continue;
                }
                names.insert(host.name.clone(), host.origin.clone());
                if let Some(v) = &h.ssh.via {
                    explicit_via.insert(host.name.clone(), at(&path, v));
                }
                if let Some(g) = &host.group {
                    groups.entry(g.clone()).or_default().push(host.name.clone());
                }
                hosts.push(host);
            }
            if let Some(spec) = &h.rollout
                && let Some((group, r)) = self.group_rollout(&path, &h, spec, &hosts[first..])
            {
                group_rollouts.insert(group, r);
            }
        }
        let default_via = fleet_file
            .and_then(|f| f.defaults.ssh.via.as_ref())
            .map(|v| at(FLEET_FILE, v));
        self.check_jumps(&mut hosts, &explicit_via, default_via, &broken_hosts);
        self.check_private(&hosts);

        Loaded {
            hosts,
            groups,
            group_rollouts,
            broken_hosts,
        }
    }

    /// The `rollout:` of a host file: its group's, for a `count: N` group
    /// (every canary one of `members`); an error for a single host.
    fn group_rollout(
        &mut self,
        path: &str,
        h: &raw::HostFile,
        spec: &raw::RolloutSpec,
        members: &[Host],
    ) -> Option<(String, crate::model::desired::Rollout)> {
        let group = members.first().and_then(|g| g.group.clone());
        match (&h.count, group) {
            (Some(_), Some(group)) => {
                let r = self.rollout(path, spec);
                for (name, s) in r.canary.iter().zip(&spec.canary) {
                    if !members.iter().any(|h| h.name == *name) {
                        self.err(
                            at(path, s)
                                .error(
                                    "unknown-host",
                                    format!("rollout canary {name:?} is not a host of this group"),
                                )
                                .with_help(format!("the group's hosts are {group}-1 … {group}-N")),
                        );
                    }
                }
                Some((group, r))
            }
            (None, _) => {
                let origin = spec
                    .canary
                    .first()
                    .or(spec.batch.as_ref())
                    .or(spec.pause.as_ref())
                    .map(|v| at(path, v))
                    .unwrap_or_else(|| Origin::file(path));
                let d = origin
                    .error("invalid-key", "`rollout:` in a host file is for `count: N` groups")
                    .with_help("a single host is applied at once; for a rollout across hosts, put `rollout:` in tidekeeper.yaml");
                self.err(d);
                None
            }
            (Some(_), None) => None,
        }
    }

    /// Every `ssh.via` names a host of the fleet that can be jumped through,
    /// and jumps do not loop. A jump host inherits `defaults.ssh.via` naming
    /// itself: it is then reached directly.
    fn check_jumps(
        &mut self,
        hosts: &mut [Host],
        explicit: &HashMap<String, Origin>,
        default_via: Option<Origin>,
        broken: &BTreeSet<String>,
    ) {
        let origin_of = |h: &Host| {
            explicit
                .get(&h.name)
                .cloned()
                .or(default_via.clone())
                .unwrap_or_else(|| h.origin.clone())
        };
        for h in hosts.iter_mut() {
            if h.ssh.via == Some(Jump::Host(h.name.clone())) && !explicit.contains_key(&h.name) {
                h.ssh.via = None;
            }
        }
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let mut errors = Vec::new();
        let mut looped: BTreeSet<String> = BTreeSet::new();
        for h in hosts.iter() {
            let Some(Jump::Host(first)) = &h.ssh.via else {
                continue;
            };
            let at = origin_of(h);
            if *first == h.name {
                errors.push(
                    at.error(
                        "invalid-value",
                        format!("{} cannot be its own jump host", h.name),
                    )
                    .with_help("remove ssh.via from this host, or name another host"),
                );
                continue;
            }
            let Some(jump) = hosts.iter().find(|j| j.name == *first) else {
                if !broken.contains(first) {
                    let d = at.error(
                        "unknown-host",
                        format!(
                            "ssh.via of {}: {first:?} is not a host of the fleet",
                            h.name
                        ),
                    );
                    errors.push(match closest(first, &names) {
                        Some(c) => d.with_help(format!("did you mean {c:?}?")),
                        None => d.with_help(
                            "name a host of the fleet, or write user@address:port of a jump host pinned in known_hosts",
                        ),
                    });
                }
                continue;
            };
            if jump.provider == ProviderKind::Local && jump.address.is_none() {
                errors.push(at.error(
                    "invalid-value",
                    format!(
                        "ssh.via of {}: {first} is a local host, which is not reached over SSH",
                        h.name
                    ),
                ));
                continue;
            }
            // Follow the chain; a loop never reaches a direct host.
            if looped.contains(&h.name) {
                continue; // reported with the first host of its loop
            }
            let mut chain = vec![h.name.clone(), first.clone()];
            let mut next = jump.ssh.via.clone();
            while let Some(Jump::Host(n)) = next {
                if chain.contains(&n) {
                    chain.push(n);
                    looped.extend(chain.iter().cloned());
                    errors.push(
                        at.clone()
                            .error(
                                "jump-loop",
                                format!("jump hosts form a loop: {}", chain.join(" → ")),
                            )
                            .with_help("one host on the way must be reached directly (no ssh.via)"),
                    );
                    break;
                }
                chain.push(n.clone());
                next = hosts
                    .iter()
                    .find(|j| j.name == n)
                    .and_then(|j| j.ssh.via.clone());
            }
        }
        for d in errors {
            // Once per place: a `count: N` group writes its via once.
            self.err_once(format!("via:{}:{}:{}", d.file, d.line, d.column), d);
        }
    }

    /// Fixed network addresses are each one host's; `ssh.address: private`
    /// needs a network to have an address in.
    fn check_private(&mut self, hosts: &[Host]) {
        let mut taken: HashMap<(String, String), &str> = HashMap::new();
        for h in hosts {
            for n in h.server.iter().flat_map(|s| &s.networks) {
                let Some(ip) = &n.ip else { continue };
                if let Some(first) = taken.insert((n.name.clone(), ip.clone()), &h.name) {
                    self.err(h.origin.error(
                        "duplicate-address",
                        format!(
                            "{} and {first} both ask for {ip} in network {}",
                            h.name, n.name
                        ),
                    ));
                }
            }
            let in_private_subnet = h
                .server
                .as_ref()
                .and_then(|s| s.ec2.as_ref())
                .filter(|e| e.private_subnet);
            if let Some(e) = in_private_subnet
                && h.ssh.address != SshAddress::Private
            {
                let subnet = e.network_subnet.as_deref().unwrap_or_default();
                self.err_once(format!("private-subnet:{}", h.origin.file), h.origin.clone().error("invalid-value", format!("{} is in private subnet {subnet}, where an instance has no public address, but connects to its public address", h.name))
                    .with_help("write ssh: {address: private, via: A HOST IN A PUBLIC SUBNET} (leave out `via` when tidekeeper runs inside the VPC), or put it in a public subnet"));
            }
            let networks = h.server.as_ref().map(|s| s.networks.len()).unwrap_or(0);
            // An EC2 instance always has a private address, in its subnet.
            if h.ssh.address == SshAddress::Private
                && networks == 0
                && h.provider != ProviderKind::Ec2
            {
                self.err_once(
                    format!("private:{}", h.origin.file),
                    h.origin.clone().error("invalid-value", format!("{} connects to its private address (ssh.address: private) but its server is on no network", h.name))
                        .with_help("add server.networks, or connect to the public address"),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn hosts(
        &mut self,
        stem: &str,
        file: &str,
        h: &raw::HostFile,
        settings: &Settings,
        fleet_vars: Option<&Vars>,
        fleet_name: &str,
        roles: &BTreeMap<String, RoleDef>,
        broken_roles: &BTreeSet<String>,
        templates: &Templates,
    ) -> Vec<Host> {
        let Some((base_name, name_origin)) = self.host_name(stem, file, h) else {
            return Vec::new();
        };
        let count = h.count.as_ref().map(|c| c.value);
        let provider = h.provider.value;
        let p_at = at(file, &h.provider);
        self.lockout_ok(file, &h.lockout_ok);
        let server = self.server(file, &p_at, provider, h, settings);
        self.check_address(file, &p_at, provider, h);
        let ssh = self.ssh(file, &h.ssh, Some(&settings.ssh));
        self.check_image_login(file, provider, h, &ssh);
        let cost = h
            .cost
            .as_ref()
            .and_then(|c| self.host_cost(file, provider, c));

        let (host_roles, role_names) = self.host_roles(file, h, roles, broken_roles);

        let labels: BTreeMap<String, String> = h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        let vars = host_vars(fleet_vars, &host_roles, h);

        let members: Vec<(String, Option<u32>)> = match count {
            Some(n) => (1..=n)
                .map(|i| (format!("{base_name}-{i}"), Some(i)))
                .collect(),
            None => vec![(base_name.clone(), None)],
        };
        // An untrusted config pays for its hosts before they are made.
        if !self.spend_hosts(file, members.len(), &vars) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (name, index) in members {
            let (public, private) = assigned(self.known, &name);
            let mut host = Host {
                name: name.clone(),
                group: count.map(|_| base_name.clone()),
                index,
                provider,
                server: server.clone(),
                address: opt(&h.address).or(public),
                private_address: server
                    .as_ref()
                    .and_then(|s| s.networks.first())
                    .and_then(|n| n.ip.clone())
                    .or(private),
                root: opt(&h.root),
                ssh: ssh.clone(),
                labels: labels.clone(),
                roles: role_names.clone(),
                vars: vars.clone(),
                resources: Vec::new(),
                handlers: Vec::new(),
                allow_destroy: h.allow_destroy.as_ref().map(|a| a.value).unwrap_or(false),
                cost: cost.clone(),
                cloud_host_key: None,
                cloud_host_key_rotated: false,
                trust: Default::default(),
                address_origin: h.address.as_ref().map(|a| at(file, a)),
                lockout_ok: opt(&h.lockout_ok),
                origin: name_origin.clone(),
                facts_used: Vec::new(),
                facts: None,
            };
            let ctx = self.template_context(&host, fleet_name);
            self.instantiate(&mut host, &host_roles, &ctx, templates);
            out.push(host);
        }
        out
    }

    /// The name of a host file's host(s) (`name:` or the file's stem) and
    /// where it is written; None (and an error) when the name, or a `count:`
    /// group's last member's, is not a valid host name, or `count` is out of
    /// range.
    fn host_name(&mut self, stem: &str, file: &str, h: &raw::HostFile) -> Option<(String, Origin)> {
        let name_origin = h
            .name
            .as_ref()
            .map(|n| at(file, n))
            .unwrap_or_else(|| Origin::file(file));
        let base_name = h
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| stem.to_string());
        let check_name = match &h.count {
            Some(n) => format!("{base_name}-{}", n.value),
            None => base_name.clone(),
        };
        if let Err(e) = check::host_name(&check_name) {
            self.err(
                name_origin
                    .error("invalid-name", e)
                    .with_help("host names come from `name:` or the file name"),
            );
            return None;
        }
        if let Some(c) = &h.count
            && (c.value == 0 || c.value > 1000)
        {
            self.err(at(file, c).error("invalid-value", "count must be from 1 to 1000"));
            return None;
        }
        Some((base_name, name_origin))
    }

    /// A cloud image that lets the server's keys in as its default user
    /// only (Lightsail's Debian: `admin`) cannot be reached as root: root's
    /// keys there only print which user to log in as.
    fn check_image_login(
        &mut self,
        file: &str,
        provider: ProviderKind,
        h: &raw::HostFile,
        ssh: &crate::model::desired::Ssh,
    ) {
        let Some(image) = h.server.as_ref().and_then(|s| s.blueprint.as_ref()) else {
            return;
        };
        let Some(user) = crate::model::desired::image_login(provider, &image.value) else {
            return;
        };
        if ssh.user != "root" {
            return;
        }
        let origin = match &h.ssh.user {
            Some(u) => at(file, u),
            None => at(file, image),
        };
        self.err(
            origin
                .error(
                    "wrong-login",
                    format!(
                        "Lightsail {:?} lets the server's keys in as `{user}`, not as root",
                        image.value
                    ),
                )
                .with_help(format!(
                    "log in as its default user, through sudo: `ssh: {{user: {user}, sudo: true}}` in this host's file (or under defaults in tidekeeper.yaml)"
                )),
        );
    }

    /// `address` only for (and required by) existing hosts, one each;
    /// `root` only for local hosts.
    fn check_address(
        &mut self,
        file: &str,
        p_at: &Origin,
        provider: ProviderKind,
        h: &raw::HostFile,
    ) {
        let count = h.count.as_ref().map(|c| c.value);
        match (provider, &h.address) {
            (ProviderKind::Existing, None) => self.err(p_at.error(
                "missing-key",
                "an existing host needs `address` (IP or DNS name)",
            )),
            (ProviderKind::Existing, Some(a))
                if a.value.trim().is_empty() || a.value.contains(char::is_whitespace) =>
            {
                self.err(at(file, a).error(
                    "invalid-value",
                    format!("address {:?} is not an IP address or DNS name", a.value),
                ))
            }
            (ProviderKind::Existing, Some(_)) if count.is_some() => self.err(
                p_at.error(
                    "invalid-value",
                    "count cannot be used with provider: existing",
                )
                .with_help("write one file per existing host, each with its address"),
            ),
            (
                ProviderKind::Hetzner
                | ProviderKind::Lightsail
                | ProviderKind::Ec2
                | ProviderKind::Local,
                Some(a),
            ) => self.err(at(file, a).error(
                "invalid-key",
                format!(
                    "`address` is only for provider: existing; a {} host's address comes from {}",
                    provider_name(provider),
                    if provider == ProviderKind::Local {
                        "the machine itself"
                    } else {
                        "the cloud"
                    }
                ),
            )),
            _ => {}
        }
        if let Some(r) = &h.root {
            if provider != ProviderKind::Local {
                self.err(at(file, r).error("invalid-key", "`root` is only for provider: local"));
            } else {
                self.host_path(file, r);
            }
        }
    }

    /// `cost:`: for machines no provider prices; a plain amount and an
    /// ISO 4217 currency code.
    fn host_cost(
        &mut self,
        file: &str,
        provider: ProviderKind,
        c: &raw::CostSpec,
    ) -> Option<HostCost> {
        if matches!(
            provider,
            ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Ec2
        ) {
            self.err(at(file, &c.monthly).error(
                "invalid-key",
                format!("`cost` is for machines no provider prices; a {} server's price comes from the provider", provider_name(provider)),
            ).with_help("remove `cost:` from this host file"));
            return None;
        }
        let m = c.monthly.value;
        if !m.is_finite() || !(0.0..=1_000_000.0).contains(&m) {
            self.err(at(file, &c.monthly).error(
                "invalid-value",
                format!("monthly cost {m} is not an amount from 0 to 1000000"),
            ));
            return None;
        }
        let cur = c.currency.value.as_str();
        if cur.len() != 3 || !cur.chars().all(|ch| ch.is_ascii_uppercase()) {
            self.err(
                at(file, &c.currency)
                    .error("invalid-value", format!("{cur:?} is not a currency code"))
                    .with_help("write the ISO 4217 code in capitals, e.g. EUR or USD"),
            );
            return None;
        }
        Some(HostCost {
            monthly: m,
            currency: cur.to_string(),
        })
    }

    /// `server.networks`: networks of tidekeeper.yaml (Hetzner), each once,
    /// a fixed address inside one of its subnets and only for a single host.
    fn server_networks(
        &mut self,
        file: &str,
        provider: ProviderKind,
        h: &raw::HostFile,
        s: &raw::ServerSpec,
        settings: &Settings,
    ) -> Vec<ServerNetwork> {
        let mut out: Vec<ServerNetwork> = Vec::new();
        for r in &s.networks {
            let (name, ip) = match &r.value {
                raw::NetworkRef::Name(n) => (n.clone(), None),
                raw::NetworkRef::Fixed { name, ip } => (name.clone(), ip.clone()),
            };
            let o = at(file, r);
            if !matches!(provider, ProviderKind::Hetzner | ProviderKind::Ec2) {
                self.err(
                    o.error(
                        "invalid-key",
                        "`server.networks` are Hetzner private networks and EC2 VPCs",
                    )
                    .with_help("Lightsail instances have no private networks tidekeeper manages"),
                );
                return Vec::new();
            }
            if settings.broken_networks.contains(&name) {
                continue;
            }
            let Some(net) = settings.networks.iter().find(|n| n.name == name) else {
                let names: Vec<&str> = settings.networks.iter().map(|n| n.name.as_str()).collect();
                let d = o.error(
                    "unknown-network",
                    format!("network {name:?} is not in tidekeeper.yaml's `networks:`"),
                );
                self.err(match closest(&name, &names) {
                    Some(c) => d.with_help(format!("did you mean {c:?}?")),
                    None => d.with_help("declare it: networks: {NAME: {ip_range: 10.0.0.0/16}}"),
                });
                continue;
            };
            if out.iter().any(|n| n.name == name) {
                self.err(o.error(
                    "duplicate-name",
                    format!("network {name:?} is listed twice"),
                ));
                continue;
            }
            if net.provider != provider {
                self.err(o.error("invalid-value", format!("network {name} belongs to provider {}; a server on {} cannot join it", provider_name(net.provider), provider_name(provider)))
                    .with_help("name a network of the server's provider (`provider:` on the network in tidekeeper.yaml)"));
                continue;
            }
            if provider == ProviderKind::Ec2 && !out.is_empty() {
                self.err(
                    o.error(
                        "invalid-value",
                        "an EC2 instance is in one network (its primary interface's subnet)",
                    )
                    .with_help(
                        "list one network; tidekeeper does not attach extra network interfaces",
                    ),
                );
                continue;
            }
            if let Some(ip) = &ip
                && !self.network_ip(&o, provider, h, net, ip)
            {
                continue;
            }
            out.push(ServerNetwork {
                reserved: net.reserved.clone(),
                name,
                ip,
            });
        }
        out
    }

    /// A fixed address `ip` in network `net`: inside one of its subnets,
    /// not one AWS keeps (EC2), not reserved, for one host only.
    fn network_ip(
        &mut self,
        o: &Origin,
        provider: ProviderKind,
        h: &raw::HostFile,
        net: &Network,
        ip: &str,
    ) -> bool {
        // One address as written (10.0.1.3), compared and sent as such.
        let addr = check::Net::parse(ip).filter(|a| a.addr.is_ipv4() && !ip.contains('/'));
        let subnets: Vec<&String> = net.subnets.iter().chain(&net.public_subnets).collect();
        let inside = addr.and_then(|a| {
            subnets
                .iter()
                .filter_map(|s| check::Net::parse(s))
                .find(|s| s.contains(&a))
                .map(|s| (a, s))
        });
        let Some((a, sub)) = inside else {
            self.err(o.error(
                "invalid-value",
                format!(
                            "{ip:?} is not an address in network {}'s subnets ({})",
                            net.name,
                            subnets.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
            ));
            return false;
        };
        if provider == ProviderKind::Ec2 && check::aws_reserved(&sub, &a) {
            self.err(o.error("invalid-value", format!("{ip} is one of the five addresses AWS reserves in subnet {sub} (the first four and the last)"))
                        .with_help("pick another address of the subnet"));
            return false;
        }
        if net.nat
            && net
                .public_subnets
                .first()
                .and_then(|p| check::nat_address(p))
                .as_deref()
                == Some(ip)
        {
            self.err(
                o.error(
                    "invalid-value",
                    format!("{ip} is the address of network {}'s NAT gateway", net.name),
                )
                .with_help("pick another address of the subnet"),
            );
            return false;
        }
        if h.count.is_some() {
            self.err(o.error("invalid-value", "a fixed network address cannot be shared by a count: N group").with_help("leave out `ip` (each server gets the next free address), or write one host file per server"));
            return false;
        }
        if net.reserved.iter().any(|r| r == ip) {
            self.err(o.error(
                "invalid-value",
                format!("{ip} is reserved in network {}", net.name),
            ));
            return false;
        }
        true
    }

    /// The roles a host file lists, each once; every name must exist.
    fn host_roles<'r>(
        &mut self,
        file: &str,
        h: &raw::HostFile,
        roles: &'r BTreeMap<String, RoleDef>,
        broken_roles: &BTreeSet<String>,
    ) -> (Vec<&'r RoleDef>, Vec<String>) {
        let mut host_roles: Vec<&RoleDef> = Vec::new();
        let mut role_names = Vec::new();
        for r in &h.roles {
            match roles.get(&r.value) {
                Some(def) => {
                    if role_names.contains(&r.value) {
                        self.err(at(file, r).error(
                            "duplicate-role",
                            format!("role {:?} is listed twice", r.value),
                        ));
                        continue;
                    }
                    host_roles.push(def);
                    role_names.push(r.value.clone());
                }
                None if broken_roles.contains(&r.value) => {}
                None => {
                    let available: Vec<&str> = roles.keys().map(|s| s.as_str()).collect();
                    let help = match closest(&r.value, &available) {
                        Some(c) => format!("did you mean {c:?}? Roles are the files in roles/"),
                        None => format!(
                            "add roles/{}.yaml or fix the name; roles: {}",
                            r.value,
                            available.join(", ")
                        ),
                    };
                    self.err(
                        at(file, r)
                            .error("unknown-role", format!("unknown role {:?}", r.value))
                            .with_help(help),
                    );
                }
            }
        }
        (host_roles, role_names)
    }

    pub(super) fn server(
        &mut self,
        file: &str,
        p_at: &Origin,
        provider: ProviderKind,
        h: &raw::HostFile,
        settings: &Settings,
    ) -> Option<Server> {
        let cloud = matches!(
            provider,
            ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Ec2
        );
        let Some(s) = &h.server else {
            if cloud {
                self.err(p_at.error("missing-key", format!("a {} host needs a `server:` section", provider_name(provider)))
                    .with_help(match provider {
                        ProviderKind::Hetzner => "e.g. server: {type: cpx31, image: debian-12, location: fsn1}",
                        ProviderKind::Ec2 => "e.g. server: {type: t3.small, image: ami-0abcdef1234567890, subnet: subnet-0123456789abcdef0}",
                        _ => "e.g. server: {bundle: medium_3_0, blueprint: debian_12, zone: eu-central-1a}",
                    }));
            }
            return None;
        };
        if !cloud {
            self.err(p_at.error(
                "invalid-key",
                format!(
                    "`server:` is only for cloud hosts (hetzner, lightsail, ec2), not provider: {}",
                    provider_name(provider)
                ),
            ));
            return None;
        }
        self.provider_settings(file, p_at, provider, s);
        if provider == ProviderKind::Lightsail && settings.lightsail.is_none() {
            self.err(p_at.error("missing-key", "this host uses provider: lightsail but tidekeeper.yaml has no providers.lightsail")
                .with_help("add providers: {lightsail: {region: eu-central-1}} to tidekeeper.yaml (the region may also come from AWS_REGION or the AWS profile: `lightsail: {}`)"));
        }
        let firewall = self.cloud_firewall(file, s);
        let networks = self.server_networks(file, provider, h, s, settings);
        let ec2 = self.ec2_server(file, p_at, h, s, settings, &networks);
        let location = match provider {
            ProviderKind::Ec2 => {
                opt(&s.region).or_else(|| settings.ec2.as_ref().and_then(|e| e.region.clone()))
            }
            _ => opt(&s.location),
        };
        Some(Server {
            networks,
            ec2,
            firewall_origin: s.firewall.first().map(|p| at(file, &p.port)),
            server_type: opt(&s.server_type),
            image: opt(&s.image),
            location,
            bundle: opt(&s.bundle),
            blueprint: opt(&s.blueprint),
            zone: opt(&s.zone),
            ssh_keys: self.server_ssh_keys(file, s),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
            firewall,
            static_ip: s.static_ip.as_ref().map(|v| v.value).unwrap_or(false),
            user_data: opt(&s.user_data),
        })
    }

    /// The settings `server:` needs for its provider are there, and those
    /// of the other provider are not.
    fn provider_settings(
        &mut self,
        file: &str,
        p_at: &Origin,
        provider: ProviderKind,
        s: &raw::ServerSpec,
    ) {
        let hetzner: [NamedSetting; 3] = [
            ("type", &s.server_type),
            ("image", &s.image),
            ("location", &s.location),
        ];
        let lightsail: [NamedSetting; 3] = [
            ("bundle", &s.bundle),
            ("blueprint", &s.blueprint),
            ("zone", &s.zone),
        ];
        let ec2: [NamedSetting; 3] = [
            ("type", &s.server_type),
            ("image", &s.image),
            ("subnet", &s.subnet),
        ];
        let ec2_only: [NamedSetting; 3] = [
            ("subnet", &s.subnet),
            ("private_ip", &s.private_ip),
            ("region", &s.region),
        ];
        let (need, forbid): (&[NamedSetting], Vec<NamedSetting>) = match provider {
            ProviderKind::Hetzner => (&hetzner, [lightsail, ec2_only].concat()),
            // A host in a network of tidekeeper.yaml gets its subnet there.
            ProviderKind::Ec2 if !s.networks.is_empty() => {
                (&ec2[..2], [&lightsail[..], &hetzner[2..]].concat())
            }
            ProviderKind::Ec2 => (&ec2, [&lightsail[..], &hetzner[2..]].concat()),
            _ => (&lightsail, [hetzner, ec2_only].concat()),
        };
        for (key, v) in need {
            if v.is_none() {
                self.err(p_at.error(
                    "missing-key",
                    format!("a {} server needs `server.{key}`", provider_name(provider)),
                ));
            }
        }
        for (key, v) in forbid {
            if let Some(v) = v {
                self.err(
                    at(file, v)
                        .error(
                            "invalid-key",
                            format!(
                                "`{key}` is not a {} server setting",
                                provider_name(provider)
                            ),
                        )
                        .with_help(match provider {
                            ProviderKind::Hetzner => "Hetzner servers use type, image, location",
                            ProviderKind::Ec2 => {
                                "EC2 instances use type, image (an AMI id or OWNER/NAME), subnet, region"
                            }
                            _ => "Lightsail instances use bundle, blueprint, zone",
                        }),
                );
            }
        }
    }

    /// `server.firewall`: the provider's firewall rules (Hetzner) or public
    /// ports (Lightsail); from everywhere unless `from` says otherwise.
    fn cloud_firewall(&mut self, file: &str, s: &raw::ServerSpec) -> Vec<CloudPort> {
        s.firewall
            .iter()
            .filter_map(|p| self.cloud_rule(file, &p.port, p.proto.as_ref(), &p.from))
            .collect()
    }

    /// One cloud firewall rule, checked: `port` (a number or a range) over
    /// `proto` (default tcp), with `cidrs` (default everywhere).
    pub(super) fn cloud_rule(
        &mut self,
        file: &str,
        port: &S<String>,
        proto: Option<&S<String>>,
        cidrs: &[S<String>],
    ) -> Option<CloudPort> {
        let (a, b) = match check::port_spec(&port.value) {
            Ok(r) => r,
            Err(e) => {
                self.err(at(file, port).error("invalid-port", e));
                return None;
            }
        };
        if let Some(pr) = proto
            && let Err(e) = check::proto(&pr.value)
        {
            self.err(at(file, pr).error("invalid-value", e));
        }
        for c in cidrs {
            if let Err(e) = check::cidr(&c.value) {
                self.err(at(file, c).error("invalid-cidr", e));
            }
        }
        let from = if cidrs.is_empty() {
            vec!["0.0.0.0/0".into(), "::/0".into()]
        } else {
            cidrs
                .iter()
                .filter_map(|c| check::cloud_networks(&c.value))
                .flatten()
                .collect()
        };
        Some(CloudPort {
            from_port: a,
            to_port: b,
            proto: proto.map_or_else(|| "tcp".into(), |p| p.value.clone()),
            from,
        })
    }

    /// `server.ssh_keys`: names of keys the provider has, or public keys
    /// to upload (checked).
    fn server_ssh_keys(&mut self, file: &str, s: &raw::ServerSpec) -> Vec<String> {
        s.ssh_keys
            .iter()
            .map(|k| {
                // A name of a key the provider has, or a public key to upload.
                if crate::model::desired::is_public_key(&k.value)
                    && let Err(e) = check::public_key(&k.value)
                {
                    self.err(at(file, k).error("invalid-key", format!("ssh key: {e}")));
                }
                k.value.clone()
            })
            .collect()
    }

    /// Merge the roles' resources into `host`, rendering templates for it and
    /// checking that no two resources claim the same thing.
    pub(super) fn instantiate(
        &mut self,
        host: &mut Host,
        roles: &[&RoleDef],
        ctx: &minijinja::Value,
        t: &Templates,
    ) {
        self.facts_seen.lock().expect("facts seen lock").clear();
        self.instantiate_roles(host, roles, ctx, t);
        let seen = std::mem::take(&mut *self.facts_seen.lock().expect("facts seen lock"));
        host.facts_used = seen.into_iter().collect();
    }

    fn instantiate_roles(
        &mut self,
        host: &mut Host,
        roles: &[&RoleDef],
        ctx: &minijinja::Value,
        t: &Templates,
    ) {
        let mut claims: HashMap<(String, String), (Origin, Option<PackageState>)> = HashMap::new();
        let (handlers, firewall) = self.merge_roles(&host.name, roles);
        for role in roles {
            for item in &role.items {
                let Some(resource) = self.render_item(item, t, ctx, &host.name) else {
                    continue;
                };
                let claim = claim_key(&resource);
                let origin = resource.origin().clone();
                let state = match &resource {
                    Resource::Package { state, .. } => Some(*state),
                    _ => None,
                };
                if let Some((first, first_state)) = claims.get(&claim) {
                    if resource.kind() == crate::change::ResourceKind::Package
                        && *first_state == state
                    {
                        continue; // two roles wanting the same package state agree
                    }
                    let d = origin
                        .error("conflict", format!("{} {} is also declared at {}", resource.kind(), resource.id(), first))
                        .with_help(format!("each path, user, unit and package may be managed once per host (both apply to host {}); keep one", host.name));
                    self.err_once(format!("claim:{first}:{origin}"), d);
                    continue;
                }
                claims.insert(claim, (origin, state));
                host.resources.push(resource);
            }
        }
        if let Some(fw) = firewall {
            let resource = self.host_firewall(fw, t, ctx, &host.name);
            host.resources.push(resource);
        }
        // Every notify must name a handler the host has.
        for r in &host.resources {
            let notify = match r {
                Resource::File(f) => &f.notify,
                Resource::Command(c) => &c.notify,
                _ => continue,
            };
            for n in notify {
                if !handlers.contains_key(n) {
                    let d = r.origin().error("unknown-handler", format!("{} {} notifies {n:?}, but no role of host {} defines that handler", r.kind(), r.id(), host.name))
                        .with_help("add it under `handlers:` in one of the host's roles, e.g. {name: ssh, restart: ssh}");
                    self.err_once(format!("notify:{}:{n}", r.origin()), d);
                }
            }
        }
        host.handlers = handlers.into_values().collect();
    }

    /// The handlers and the firewall of a host's roles together; a handler
    /// or default policy defined differently by two roles is an error.
    fn merge_roles(
        &mut self,
        host_name: &str,
        roles: &[&RoleDef],
    ) -> (BTreeMap<String, Handler>, Option<RoleFirewall>) {
        let mut firewall: Option<RoleFirewall> = None;
        let mut handlers: BTreeMap<String, Handler> = BTreeMap::new();
        for role in roles {
            for h in &role.handlers {
                match handlers.get(&h.name) {
                    Some(first) if first.action != h.action => {
                        let d = h.origin.error(
                            "duplicate-name",
                            format!(
                                "handler {:?} is also defined differently at {}",
                                h.name, first.origin
                            ),
                        );
                        self.err_once(format!("handler:{}:{}", first.origin, h.origin), d);
                    }
                    Some(_) => {}
                    None => {
                        handlers.insert(h.name.clone(), h.clone());
                    }
                }
            }
            if let Some(fw) = &role.firewall {
                let acc = firewall.get_or_insert_with(|| RoleFirewall {
                    incoming: None,
                    outgoing: None,
                    routed: None,
                    metadata_from_containers: None,
                    rules: Vec::new(),
                    origin: fw.origin.clone(),
                });
                for (mine, theirs) in [
                    (&mut acc.incoming, fw.incoming),
                    (&mut acc.outgoing, fw.outgoing),
                    (&mut acc.routed, fw.routed),
                    (
                        &mut acc.metadata_from_containers,
                        fw.metadata_from_containers,
                    ),
                ] {
                    match (*mine, theirs) {
                        (Some(a), Some(b)) if a != b => {
                            let d = fw.origin.error("conflict", format!("firewall default policies differ from those at {}", acc.origin))
                                .with_help(format!("set incoming/outgoing/routed/metadata_from_containers in one role only (both roles apply to host {})", host_name));
                            self.err_once(format!("fw:{}:{}", acc.origin, fw.origin), d);
                        }
                        (None, Some(b)) => {
                            *mine = Some(b);
                            acc.origin = fw.origin.clone();
                        }
                        _ => {}
                    }
                }
                acc.rules.extend(fw.rules.iter().cloned());
            }
        }
        (handlers, firewall)
    }

    /// A role's item for one host: templates rendered with its variables.
    /// None when a render failed (the error is reported).
    fn render_item(
        &mut self,
        item: &Item,
        t: &Templates,
        ctx: &minijinja::Value,
        host_name: &str,
    ) -> Option<Resource> {
        Some(match item {
            Item::Ready(Resource::Sysctl { key, value, origin }) if is_template(value) => {
                let value = self.render_str(t, value, ctx, origin, host_name)?;
                Resource::Sysctl {
                    key: key.clone(),
                    value,
                    origin: origin.clone(),
                }
            }
            Item::Ready(r) => r.clone(),
            Item::When {
                condition,
                origin,
                item,
            } => {
                if !self.holds(t, condition, ctx, origin, host_name)? {
                    return None;
                }
                return self.render_item(item, t, ctx, host_name);
            }
            Item::Template { base, template } => {
                let mut f = base.clone();
                match self.render(t, template, ctx, host_name) {
                    Some((bytes, used_secret)) => {
                        f.content.bytes = bytes;
                        f.content.sensitive |= used_secret;
                        if used_secret && f.mode.is_none() {
                            f.mode = Some(0o600);
                        }
                    }
                    None => return None,
                }
                Resource::File(f)
            }
            Item::Stack { base } => {
                let mut s = base.clone();
                let mut rendered = BTreeMap::new();
                for (rel, content) in &base.files {
                    match rel.strip_suffix(".j2") {
                        Some(plain) => {
                            let name = format!("stacks/{}/{rel}", base.name);
                            if let Some((bytes, used_secret)) =
                                self.render(t, &name, ctx, host_name)
                            {
                                rendered.insert(
                                    plain.to_string(),
                                    Content {
                                        bytes,
                                        sensitive: used_secret,
                                    },
                                );
                            }
                        }
                        None => {
                            rendered.insert(rel.clone(), content.clone());
                        }
                    }
                }
                s.files = rendered;
                Resource::Stack(s)
            }
        })
    }

    /// The host's firewall: its roles' rules, `from` rendered for the host,
    /// duplicates once, and deny incoming / allow outgoing by default.
    fn host_firewall(
        &mut self,
        fw: RoleFirewall,
        t: &Templates,
        ctx: &minijinja::Value,
        host_name: &str,
    ) -> Resource {
        let mut rules: Vec<FirewallRule> = Vec::new();
        let mut sites = Vec::new();
        for (mut rule, from_at, site) in fw.rules {
            if is_template(&rule.from) {
                let Some(from) = self.render_str(t, &rule.from, ctx, &from_at, host_name) else {
                    continue;
                };
                if let Err(e) = check::cidr(&from) {
                    let d = from_at.error(
                        "invalid-cidr",
                        format!("{e} (rendered for host {})", host_name),
                    );
                    self.err_once(format!("cidr:{from_at}:{from}"), d);
                    continue;
                }
                rule.from = from;
            }
            if !rules.contains(&rule) {
                rules.push(rule);
                sites.push(site);
            }
        }
        Resource::Firewall(Firewall {
            incoming: fw.incoming.unwrap_or(Policy::Deny),
            outgoing: fw.outgoing.unwrap_or(Policy::Allow),
            routed: fw.routed,
            metadata_from_containers: fw.metadata_from_containers,
            docker: false,
            rules,
            sites,
            origin: fw.origin,
        })
    }

    pub(super) fn known_hosts(&mut self) -> Vec<KnownHost> {
        let Some(bytes) = self.tree.file(KNOWN_HOSTS_FILE) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(bytes).into_owned();
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let o = Origin::new(KNOWN_HOSTS_FILE, i as u64 + 1, 1);
            if l.starts_with('@') {
                self.err(
                    o.error(
                        "invalid-known-host",
                        "markers such as @cert-authority and @revoked are not supported",
                    )
                    .with_help("pin each host's key on its own line: \"<host> <type> <key>\""),
                );
                continue;
            }
            let Some((hosts, key)) = l.split_once(char::is_whitespace) else {
                self.err(o.error(
                    "invalid-known-host",
                    "expected \"<host>[,<host>…] <type> <key>\"",
                ));
                continue;
            };
            match check::public_key(key.trim()) {
                Ok((key_type, key)) => out.push(KnownHost {
                    hosts: hosts.split(',').map(str::to_string).collect(),
                    key_type,
                    key,
                    line: i as u64 + 1,
                }),
                Err(e) => self.err(
                    Origin::new(
                        KNOWN_HOSTS_FILE,
                        i as u64 + 1,
                        hosts.chars().count() as u64 + 2,
                    )
                    .error("invalid-known-host", e),
                ),
            }
        }
        out
    }

    pub(super) fn cloud_only(
        &mut self,
        o: &Origin,
        job: &str,
        kind: &str,
        selected: &[String],
        hosts: &[Host],
    ) {
        for name in selected {
            if let Some(h) = hosts.iter().find(|h| &h.name == name)
                && !matches!(
                    h.provider,
                    ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Ec2
                )
            {
                self.err(o.error("cloud-only", format!("job {job:?} is a {kind} job but selects host {name:?}, which is provider: {}", provider_name(h.provider)))
                        .with_help(format!("{kind} jobs act through a cloud API; select only hetzner, lightsail or ec2 hosts")));
                return;
            }
        }
    }
}

pub(super) fn claim_key(r: &Resource) -> (String, String) {
    let ns = match r {
        Resource::File(_)
        | Resource::Directory(_)
        | Resource::Symlink { .. }
        | Resource::Absent { .. } => "path",
        Resource::Service(_) => "unit",
        Resource::Mount(_) => "mount",
        Resource::AptRepo(r) => {
            return (
                "path".into(),
                format!("/etc/apt/sources.list.d/{}.sources", r.name),
            );
        }
        // What they write on the host: a timer unit, a file in /etc/cron.d.
        Resource::Timer(t) => return ("unit".into(), format!("{}.timer", t.name)),
        Resource::Cron(c) => return ("path".into(), format!("/etc/cron.d/{}", c.name)),
        other => other.kind().word(),
    };
    (ns.to_string(), r.id().to_string())
}
