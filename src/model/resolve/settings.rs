//! Stage 1: tidekeeper.yaml's settings (SSH, rollout, health, forge, cost
//! limits), with defaults where the file is missing or broken, so the
//! later stages are still checked.

use super::*;

impl Loader<'_> {
    pub(super) fn rollout(
        &mut self,
        file: &str,
        r: &raw::RolloutSpec,
    ) -> crate::model::desired::Rollout {
        use crate::model::desired::Batch;
        let batch = match &r.batch {
            None => Batch::Count(1),
            Some(b) => {
                let v = b.value.trim();
                let parsed = match v.strip_suffix('%') {
                    Some(p) => p
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|p| (1..=100).contains(p))
                        .map(Batch::Percent),
                    None => v.parse::<u32>().ok().filter(|n| *n >= 1).map(Batch::Count),
                };
                parsed.unwrap_or_else(|| {
                    self.err(at(file, b).error(
                        "invalid-value",
                        format!("rollout batch {v:?} is not a count (2) or a share (25%)"),
                    ));
                    Batch::Count(1)
                })
            }
        };
        let pause_secs = match &r.pause {
            None => 0,
            Some(p) => match check::duration(&p.value) {
                Ok(d) => d.as_secs(),
                Err(e) => {
                    self.err(at(file, p).error("invalid-duration", e));
                    0
                }
            },
        };
        let origin = Origin::file(file);
        let health = self.health_checks(file, &origin, &r.health, None);
        crate::model::desired::Rollout {
            canary: r.canary.iter().map(|c| c.value.clone()).collect(),
            batch,
            pause_secs,
            health,
        }
    }

    /// `proposals:`: the worker's limits and one proposal's budgets.
    fn proposal_limits(&mut self, file: &str, p: &raw::ProposalSpec) -> ProposalLimits {
        let d = ProposalLimits::default();
        let mut secs = |v: &Option<S<String>>, default: u64| match v {
            None => default,
            Some(v) => match check::duration(&v.value) {
                Ok(t) if t.as_secs() >= 1 => t.as_secs(),
                Ok(_) => {
                    self.err(at(file, v).error("invalid-value", "must be at least 1s"));
                    default
                }
                Err(e) => {
                    self.err(at(file, v).error("invalid-duration", e));
                    default
                }
            },
        };
        let cpu_secs = secs(&p.cpu, d.cpu_secs);
        let deadline_secs = secs(&p.deadline, d.deadline_secs);
        let mut positive = |v: &Option<S<u64>>, default: u64, what: &str| match v {
            Some(v) if v.value == 0 => {
                self.err(at(file, v).error("invalid-value", format!("{what} must be at least 1")));
                default
            }
            Some(v) => v.value,
            None => default,
        };
        let memory = positive(&p.memory_mib, d.memory_bytes >> 20, "proposals.memory_mib");
        let rendered = positive(
            &p.max_rendered_mib,
            d.max_rendered_bytes >> 20,
            "proposals.max_rendered_mib",
        );
        ProposalLimits {
            memory_bytes: memory.saturating_mul(1 << 20).max(64 << 20),
            cpu_secs,
            deadline_secs,
            workers: p.workers.as_ref().map_or(d.workers, |w| w.value.max(1)),
            max_hosts: p.max_hosts.as_ref().map_or(d.max_hosts, |v| v.value),
            max_rendered_bytes: rendered.saturating_mul(1 << 20),
            max_resources: p
                .max_resources
                .as_ref()
                .map_or(d.max_resources, |v| v.value),
            ..d
        }
    }

    pub(super) fn settings(&mut self, f: &raw::FleetFile) -> Settings {
        let file = FLEET_FILE;
        if let Err(e) = check::host_name(&f.fleet.value) {
            self.err(at(file, &f.fleet).error("invalid-name", format!("fleet name: {e}")));
        }
        let ssh = self.ssh(file, &f.defaults.ssh, None);
        let parallelism = f.defaults.parallelism.as_ref().map(|p| {
            if p.value == 0 {
                self.err(at(file, p).error("invalid-value", "parallelism must be at least 1"));
            }
            p.value
        });
        let poll = self.duration(&f.intervals.poll, 60, 5, "intervals.poll");
        let drift = self.duration(&f.intervals.drift, 600, 30, "intervals.drift");
        let full_check = self.duration(&f.intervals.full_check, 86_400, 60, "intervals.full_check");
        let hz = f.providers.hetzner.as_ref();
        let hz_timeout = self.duration(
            &hz.and_then(|h| h.timeout.clone()),
            30,
            1,
            "providers.hetzner.timeout",
        );
        let ls_timeout = self.duration(
            &f.providers
                .lightsail
                .as_ref()
                .and_then(|l| l.timeout.clone()),
            30,
            1,
            "providers.lightsail.timeout",
        );
        let ec2_timeout = self.duration(
            &f.providers.ec2.as_ref().and_then(|l| l.timeout.clone()),
            30,
            1,
            "providers.ec2.timeout",
        );
        self.endpoints(f);
        let forge = f.status.forge.as_ref().map(|fg| self.forge(fg));
        let branch = opt(&f.status.branch).unwrap_or_else(|| "tidekeeper/status".into());
        self.status_refs(f);
        let proposals = self.proposal_limits(file, &f.proposals);
        let networks = self.networks(f);
        Settings {
            proposals,
            ssh,
            parallelism: parallelism.unwrap_or(10).max(1),
            drift: f.drift.as_ref().map(|d| d.value).unwrap_or_default(),
            poll_interval_secs: poll,
            drift_interval_secs: drift,
            full_check_secs: full_check,
            status_branch: branch,
            notes_ref: opt(&f.status.notes_ref)
                .unwrap_or_else(|| crate::model::desired::DEFAULT_NOTES_REF.into()),
            forge,
            hetzner: Hetzner {
                declared: hz.is_some(),
                token_env: hz
                    .and_then(|h| opt(&h.token_env))
                    .unwrap_or_else(|| "HCLOUD_TOKEN".into()),
                endpoint: hz.and_then(|h| opt(&h.endpoint)),
                timeout_secs: hz_timeout,
            },
            lightsail: f.providers.lightsail.as_ref().map(|l| Lightsail {
                region: opt(&l.region),
                credentials: self.aws_credentials(l),
                endpoint: opt(&l.endpoint),
                timeout_secs: ls_timeout,
            }),
            ec2: f.providers.ec2.as_ref().map(|l| Lightsail {
                region: opt(&l.region),
                credentials: self.aws_credentials(l),
                endpoint: opt(&l.endpoint),
                timeout_secs: ec2_timeout,
            }),
            secrets_identity_env: opt(&f.secrets.identity_env)
                .unwrap_or_else(|| "TIDEKEEPER_AGE_IDENTITY".into()),
            secrets_identity_file: opt(&f.secrets.identity_file),
            suspend: f.suspend.as_ref().is_some_and(|s| s.value),
            rollout: f.rollout.as_ref().map(|r| self.rollout(file, r)),
            require_reviewed_plan: f
                .apply
                .require_reviewed_plan
                .as_ref()
                .is_some_and(|s| s.value),
            apply_requirements: self.requirements(f.apply.apply_requirements.as_ref()),
            apply_windows: Vec::new(),
            notify: Default::default(),
            broken_networks: f
                .networks
                .keys()
                .filter(|n| !networks.iter().any(|x| x.name == **n))
                .cloned()
                .collect(),
            networks,
        }
    }

    /// `apply.apply_requirements`; each `owners:` line is read as a
    /// CODEOWNERS line, and one that is not is an error at its place.
    fn requirements(
        &mut self,
        r: Option<&raw::RequirementsSpec>,
    ) -> Option<crate::model::desired::ApplyRequirements> {
        let r = r?;
        let owners = r.owners.as_ref().map(|lines| {
            let mut kept = Vec::new();
            for l in lines {
                match crate::codeowners::parse_line(&l.value) {
                    Ok(_) => kept.push(l.value.clone()),
                    Err(why) => self.err(
                        at(FLEET_FILE, l)
                            .error("invalid-value", format!("apply_requirements owners: {why}")),
                    ),
                }
            }
            kept
        });
        if owners.is_some() {
            self.check_codeowners();
        }
        Some(crate::model::desired::ApplyRequirements {
            approved: r.approved.as_ref().map_or(0, |a| a.value),
            owners,
            mergeable: r.mergeable.as_ref().is_some_and(|m| m.value),
            undiverged: r.undiverged.as_ref().is_some_and(|m| m.value),
        })
    }

    /// The repo's CODEOWNERS (where GitHub looks for it), read once it is
    /// asked for: a line that is not one is an error at its line.
    fn check_codeowners(&mut self) {
        let Some((file, text)) = crate::codeowners::FILES
            .iter()
            .find_map(|f| self.tree.text(f).map(|t| (*f, t)))
        else {
            return;
        };
        if let Err((line, why)) = crate::codeowners::parse(&text) {
            self.err(Origin::new(file, line as u64, 1).error("invalid-value", why));
        }
    }

    /// A duration setting in seconds: `default` when unset, at least `min`.
    fn duration(&mut self, v: &Option<S<String>>, default: u64, min: u64, what: &str) -> u64 {
        let file = FLEET_FILE;
        let Some(v) = v else { return default };
        match check::duration(&v.value) {
            Ok(d) if d.as_secs() >= min => d.as_secs(),
            Ok(_) => {
                self.err(
                    at(file, v).error("invalid-value", format!("{what} must be at least {min}s")),
                );
                default
            }
            Err(e) => {
                self.err(at(file, v).error("invalid-duration", e));
                default
            }
        }
    }

    /// Cloud API endpoints are URLs.
    fn endpoints(&mut self, f: &raw::FleetFile) {
        let file = FLEET_FILE;
        let hz = f.providers.hetzner.as_ref();
        for e in [
            hz.and_then(|h| h.endpoint.as_ref()),
            f.providers
                .lightsail
                .as_ref()
                .and_then(|l| l.endpoint.as_ref()),
            f.providers.ec2.as_ref().and_then(|l| l.endpoint.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            if !(e.value.starts_with("https://") || e.value.starts_with("http://")) {
                self.err(at(file, e).error(
                    "invalid-value",
                    format!("endpoint {:?} must be an http:// or https:// URL", e.value),
                ));
            }
        }
    }

    /// The status branch and the notes ref are names git takes.
    fn status_refs(&mut self, f: &raw::FleetFile) {
        let file = FLEET_FILE;
        if let Some(b) = &f.status.branch
            && (b.value.is_empty()
                || b.value.contains("..")
                || b.value.contains(' ')
                || b.value.starts_with('/'))
        {
            self.err(at(file, b).error(
                "invalid-value",
                format!("{:?} is not a valid branch name", b.value),
            ));
        }
        if let Some(n) = &f.status.notes_ref
            && (!n.value.starts_with("refs/notes/") || !git2::Reference::is_valid_name(&n.value))
        {
            self.err(
                at(file, n)
                    .error("invalid-value", format!("{:?} is not a notes ref", n.value))
                    .with_help("a ref under refs/notes/, e.g. refs/notes/tidekeeper"),
            );
        }
    }

    /// `networks:`: private RFC 1918 ranges, subnets inside them.
    fn networks(&mut self, f: &raw::FleetFile) -> Vec<Network> {
        let mut out = Vec::new();
        for (name, n) in &f.networks {
            if let Err(e) = check::host_name(name) {
                self.err(
                    at(FLEET_FILE, &n.ip_range).error("invalid-name", format!("network name: {e}")),
                );
                continue;
            }
            if let Some(net) = self.network(name, n, f.providers.ec2.as_ref()) {
                out.push(net);
            }
        }
        out
    }

    /// One network of `networks:`, checked; None when it has errors.
    fn network(
        &mut self,
        name: &str,
        n: &raw::NetworkSpec,
        aws: Option<&raw::LightsailSettings>,
    ) -> Option<Network> {
        let file = FLEET_FILE;
        let provider = self.network_provider(name, n, aws)?;
        let ec2 = provider == ProviderKind::Ec2;
        let range = self.network_range(name, n, ec2)?;
        let ec2_only = [
            (
                n.public_subnets.first().map(|s| at(file, s)),
                "public_subnets",
            ),
            (n.nat.as_ref().map(|s| at(file, s)), "nat"),
        ];
        for (o, key) in ec2_only {
            if let Some(o) = o.filter(|_| !ec2) {
                self.err(
                    o.error(
                        "invalid-key",
                        format!("network {name}: `{key}` is for EC2 networks (VPCs)"),
                    )
                    .with_help("add `provider: ec2` to the network, or remove the key"),
                );
                return None;
            }
        }
        let mut seen = Vec::new();
        let mut subnets = self.subnets(name, range, &n.subnets, ec2, &mut seen);
        let public_subnets = self.subnets(name, range, &n.public_subnets, ec2, &mut seen);
        if subnets.is_empty() && public_subnets.is_empty() {
            subnets.push(range.to_string());
        }
        let nat = n.nat.as_ref().is_some_and(|a| a.value);
        if let Some(o) = n
            .nat
            .as_ref()
            .filter(|a| a.value && !public_subnets.is_empty() && n.subnets.is_empty())
        {
            self.err(at(file, o).error("invalid-value", format!("network {name}: a NAT gateway is the private subnets' way out, and the network has none"))
                .with_help("add subnets: [A PRIVATE SUBNET] to the network, or leave out nat"));
        }
        if let (Some(r), true) = (n.reserved.first(), ec2) {
            self.err(at(file, r).error("invalid-key", format!("network {name}: `reserved` is for Hetzner networks; EC2 keeps an address only for the instance that asks for it"))
                .with_help("give the machine attached by hand a fixed address outside the subnets tidekeeper's hosts use"));
        }
        if let (Some(z), Some(region)) = (
            n.zone.as_ref().filter(|_| ec2),
            aws.and_then(|a| a.region.as_ref()),
        ) && !z.value.starts_with(&region.value)
        {
            self.err(
                at(file, z)
                    .error(
                        "invalid-value",
                        format!(
                            "network {name}: zone {:?} is not in region {}",
                            z.value, region.value
                        ),
                    )
                    .with_help(format!(
                        "an availability zone of the region, e.g. {}a",
                        region.value
                    )),
            );
        }
        if let Some(o) = n
            .nat
            .as_ref()
            .filter(|a| a.value && public_subnets.is_empty())
        {
            self.err(at(file, o).error("invalid-value", format!("network {name}: a NAT gateway lives in a public subnet, and the network has none"))
                .with_help("add public_subnets: [A /24 INSIDE THE RANGE] to the network"));
        }
        let reserved = self.reserved(name, n, range);
        let zone = opt(&n.zone).unwrap_or_else(|| {
            if ec2 {
                String::new()
            } else {
                "eu-central".into()
            }
        });
        Some(Network {
            name: name.to_string(),
            provider,
            region: aws
                .filter(|_| ec2)
                .and_then(|a| opt(&a.region))
                .unwrap_or_default(),
            ip_range: range.to_string(),
            subnets,
            public_subnets,
            nat,
            zone,
            allow_destroy: n.allow_destroy.as_ref().is_some_and(|a| a.value),
            reserved,
        })
    }

    /// Whose network: Hetzner (the default) or EC2, whose settings exist.
    fn network_provider(
        &mut self,
        name: &str,
        n: &raw::NetworkSpec,
        aws: Option<&raw::LightsailSettings>,
    ) -> Option<ProviderKind> {
        let file = FLEET_FILE;
        let provider = n
            .provider
            .as_ref()
            .map_or(ProviderKind::Hetzner, |p| p.value);
        let ec2 = provider == ProviderKind::Ec2;
        if let Some(p) = n
            .provider
            .as_ref()
            .filter(|_| !matches!(provider, ProviderKind::Hetzner | ProviderKind::Ec2))
        {
            self.err(
                at(file, p)
                    .error(
                        "invalid-value",
                        format!(
                            "network {name}: {} has no private networks tidekeeper manages",
                            provider_name(p.value)
                        ),
                    )
                    .with_help(
                        "a network is `provider: hetzner` (the default) or `provider: ec2` (a VPC)",
                    ),
            );
            return None;
        }
        if let Some(p) = n.provider.as_ref().filter(|_| ec2 && aws.is_none()) {
            self.err(
                at(file, p)
                    .error(
                        "missing-key",
                        format!(
                            "network {name} is an EC2 VPC but tidekeeper.yaml has no providers.ec2"
                        ),
                    )
                    .with_help("add providers: {ec2: {region: eu-central-1}} to tidekeeper.yaml"),
            );
            return None;
        }
        Some(provider)
    }

    /// The network's range: private, of a size the provider takes.
    fn network_range(&mut self, name: &str, n: &raw::NetworkSpec, ec2: bool) -> Option<check::Net> {
        let file = FLEET_FILE;
        let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
            .map(|n| check::Net::parse(n).expect("literal"));
        let Some(range) = check::Net::parse(&n.ip_range.value).filter(|r| r.addr.is_ipv4()) else {
            self.err(at(file, &n.ip_range).error(
                "invalid-cidr",
                format!(
                    "{:?} is not an IPv4 network such as 10.0.0.0/16",
                    n.ip_range.value
                ),
            ));
            return None;
        };
        // EC2 takes a VPC of /16 to /28; Hetzner any private /24 or more.
        let (widest, narrowest) = if ec2 { (16, 28) } else { (0, 24) };
        if !private.iter().any(|p| p.contains(&range))
            || range.prefix > narrowest
            || range.prefix < widest
        {
            let sizes = if ec2 {
                "of /16 to /28 (what a VPC can be)"
            } else {
                "of /24 or more"
            };
            self.err(
                at(file, &n.ip_range)
                    .error(
                        "invalid-cidr",
                        format!("network {name}: {range} is not a private range {sizes}"),
                    )
                    .with_help(
                        "use part of 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, e.g. 10.0.0.0/16",
                    ),
            );
            return None;
        }
        if ec2 && range.network() != range {
            self.err(at(file, &n.ip_range).error("invalid-cidr", format!("network {name}: {range} has host bits set; a VPC's range is a network such as {}", range.network()))
                .with_help(format!("write {}", range.network())));
            return None;
        }
        Some(range)
    }

    /// `reserved:`: single addresses inside the network's range.
    fn reserved(&mut self, name: &str, n: &raw::NetworkSpec, range: check::Net) -> Vec<String> {
        let file = FLEET_FILE;
        let mut reserved = Vec::new();
        for r in &n.reserved {
            match check::Net::parse(&r.value).filter(|a| a.addr.is_ipv4() && a.prefix == 32) {
                Some(a) if range.contains(&a) => reserved.push(a.addr.to_string()),
                _ => self.err(at(file, r).error(
                    "invalid-value",
                    format!(
                        "reserved {:?} is not one address in network {name} ({range})",
                        r.value
                    ),
                )),
            }
        }
        reserved
    }

    /// Subnets inside `range`; on EC2 each a network of /16 to /28 that
    /// overlaps none before it (`seen`), as EC2 requires.
    fn subnets(
        &mut self,
        name: &str,
        range: check::Net,
        list: &[S<String>],
        ec2: bool,
        seen: &mut Vec<check::Net>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for sn in list {
            let Some(sub) = check::Net::parse(&sn.value).filter(|s| range.contains(s)) else {
                self.err(at(FLEET_FILE, sn).error(
                    "invalid-cidr",
                    format!(
                        "subnet {:?} is not inside network {name} ({range})",
                        sn.value
                    ),
                ));
                continue;
            };
            if ec2 && (sub.network() != sub || !(16..=28).contains(&sub.prefix)) {
                self.err(
                    at(FLEET_FILE, sn)
                        .error(
                            "invalid-cidr",
                            format!(
                                "subnet {:?}: an EC2 subnet is a network of /16 to /28",
                                sn.value
                            ),
                        )
                        .with_help(format!("e.g. {}/24", sub.network().addr)),
                );
                continue;
            }
            if let Some(other) = seen.iter().find(|o| o.contains(&sub) || sub.contains(o)) {
                self.err(at(FLEET_FILE, sn).error(
                    "invalid-cidr",
                    format!("subnet {sub} overlaps subnet {other} of network {name}"),
                ));
                continue;
            }
            seen.push(sub);
            out.push(sub.to_string());
        }
        out
    }

    /// `status.forge`: where plans and statuses are posted.
    /// A key pair from named variables when tidekeeper.yaml names them;
    /// otherwise the SDK's chain, as the AWS CLI does.
    fn aws_credentials(&mut self, l: &raw::LightsailSettings) -> AwsCredentials {
        let (access, secret) = (opt(&l.access_key_env), opt(&l.secret_key_env));
        let named = [&l.access_key_env, &l.secret_key_env, &l.session_token_env];
        match (&access, &secret) {
            (Some(_), None) | (None, Some(_)) => {
                let given = named.iter().find_map(|n| n.as_ref()).expect("one is set");
                self.err(
                    at(FLEET_FILE, given)
                        .error(
                            "missing-key",
                            "access_key_env and secret_key_env go together",
                        )
                        .with_help(
                            "name both variables, or neither to use the AWS SDK's credential \
                             chain (AWS_ACCESS_KEY_ID…, AWS_PROFILE, SSO, instance roles)",
                        ),
                );
            }
            (None, None) if l.session_token_env.is_some() => {
                let t = l.session_token_env.as_ref().expect("set");
                self.err(
                    at(FLEET_FILE, t)
                        .error(
                            "missing-key",
                            "session_token_env needs access_key_env and secret_key_env",
                        )
                        .with_help("without them the chain reads AWS_SESSION_TOKEN itself"),
                );
            }
            _ => {}
        }
        if let (Some(p), Some(_)) = (&l.profile, &access) {
            self.err(
                at(FLEET_FILE, p)
                    .error(
                        "invalid-value",
                        "a profile and access_key_env exclude each other",
                    )
                    .with_help("keep one: the profile's credentials, or the named variables"),
            );
        }
        match (access, secret) {
            (Some(access_key_env), Some(secret_key_env)) => AwsCredentials::Env {
                access_key_env,
                secret_key_env,
                session_token_env: opt(&l.session_token_env),
            },
            _ => AwsCredentials::Chain {
                profile: opt(&l.profile),
            },
        }
    }

    fn forge(&mut self, fg: &raw::ForgeSettings) -> Forge {
        let (default_url, default_env) = match fg.kind.value {
            ForgeKind::Github => (Some("https://api.github.com"), "GITHUB_TOKEN"),
            ForgeKind::Gitea => (None, "GITEA_TOKEN"),
        };
        let url = match (&fg.url, default_url) {
            (Some(u), _) => u.value.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                self.err(at(FLEET_FILE, &fg.kind).error(
                    "missing-key",
                    "a gitea forge needs `url`, e.g. https://gitea.example.com/api/v1",
                ));
                String::new()
            }
        };
        if !fg.repo.value.contains('/') {
            self.err(at(FLEET_FILE, &fg.repo).error(
                "invalid-value",
                format!("forge repo {:?} must be \"owner/name\"", fg.repo.value),
            ));
        }
        Forge {
            kind: fg.kind.value,
            url,
            repo: fg.repo.value.clone(),
            token_env: opt(&fg.token_env).unwrap_or_else(|| default_env.into()),
        }
    }

    pub(super) fn ssh(&mut self, file: &str, s: &raw::SshSettings, base: Option<&Ssh>) -> Ssh {
        if let Some(u) = &s.user
            && let Err(e) = check::account_name(&u.value)
        {
            self.err(at(file, u).error("invalid-value", format!("ssh user: {e}")));
        }
        if let Some(p) = &s.port
            && p.value == 0
        {
            self.err(at(file, p).error("invalid-port", "ssh port must be 1 to 65535"));
        }
        let base = base.cloned().unwrap_or(Ssh {
            user: "root".into(),
            port: 22,
            key: None,
            sudo: false,
            trust_on_first_use: false,
            via: None,
            address: SshAddress::Public,
            from: Vec::new(),
        });
        for c in &s.from {
            if let Err(e) = check::cidr(&c.value) {
                self.err(at(file, c).error("invalid-cidr", format!("ssh.from: {e}")));
            }
        }
        let via = match &s.via {
            Some(v) => self.jump(file, v, base.user.as_str()),
            None => base.via.clone(),
        };
        Ssh {
            via,
            address: s.address.as_ref().map(|a| a.value).unwrap_or(base.address),
            from: if s.from.is_empty() {
                base.from
            } else {
                s.from.iter().map(|c| c.value.clone()).collect()
            },
            user: opt(&s.user).unwrap_or(base.user),
            port: s.port.as_ref().map(|p| p.value).unwrap_or(base.port),
            key: opt(&s.key).or(base.key),
            sudo: s.sudo.as_ref().map(|p| p.value).unwrap_or(base.sudo),
            trust_on_first_use: s
                .trust_on_first_use
                .as_ref()
                .map(|p| p.value)
                .unwrap_or(base.trust_on_first_use),
        }
    }
}

impl Loader<'_> {
    /// `ssh.via`: a fleet host's name, or `[user@]address[:port]`.
    fn jump(&mut self, file: &str, v: &S<String>, user: &str) -> Option<Jump> {
        let text = v.value.trim();
        if !text.contains(['@', ':', '.']) {
            return match check::host_name(text) {
                Ok(()) => Some(Jump::Host(text.to_string())),
                Err(e) => {
                    self.err(at(file, v).error("invalid-value", format!("ssh.via: {e}")).with_help(
                        "name a host of the fleet, or write user@address:port of a jump host pinned in known_hosts",
                    ));
                    None
                }
            };
        }
        match check::jump_address(text) {
            Ok((u, address, port)) => {
                let user = u.unwrap_or(user).to_string();
                if let Err(e) = check::account_name(&user) {
                    self.err(at(file, v).error("invalid-value", format!("ssh.via user: {e}")));
                    return None;
                }
                Some(Jump::Address {
                    user,
                    address,
                    port,
                })
            }
            Err(e) => {
                self.err(at(file, v).error("invalid-value", format!("ssh.via: {e}")).with_help(
                    "write [user@]address[:port], e.g. admin@203.0.113.7:22, or a host of the fleet by name",
                ));
                None
            }
        }
    }
}

pub(super) fn default_settings() -> Settings {
    Settings {
        proposals: ProposalLimits::default(),
        ssh: Ssh {
            user: "root".into(),
            port: 22,
            key: None,
            sudo: false,
            trust_on_first_use: false,
            via: None,
            address: SshAddress::Public,
            from: Vec::new(),
        },
        parallelism: 10,
        drift: DriftMode::Report,
        poll_interval_secs: 60,
        drift_interval_secs: 600,
        full_check_secs: 86_400,
        status_branch: "tidekeeper/status".into(),
        notes_ref: crate::model::desired::DEFAULT_NOTES_REF.into(),
        forge: None,
        hetzner: Hetzner {
            declared: false,
            token_env: "HCLOUD_TOKEN".into(),
            endpoint: None,
            timeout_secs: 30,
        },
        lightsail: None,
        ec2: None,
        secrets_identity_env: "TIDEKEEPER_AGE_IDENTITY".into(),
        secrets_identity_file: None,
        suspend: false,
        rollout: None,
        require_reviewed_plan: false,
        apply_requirements: None,
        apply_windows: Vec::new(),
        notify: Default::default(),
        networks: Vec::new(),
        broken_networks: Vec::new(),
    }
}

pub(super) fn settings_fleet_name(f: Option<&raw::FleetFile>) -> String {
    f.map(|f| f.fleet.value.clone()).unwrap_or_default()
}
