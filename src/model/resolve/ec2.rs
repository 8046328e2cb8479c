//! `server:` settings only EC2 instances have: subnet, fixed private
//! address, root volume, termination protection, region.

use super::*;

/// EBS volume types EC2 offers for a root volume.
const VOLUME_TYPES: &[&str] = &["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

impl Loader<'_> {
    /// The EC2 part of `server:`, checked; None for other providers (whose
    /// files must not use the EC2-only keys).
    pub(super) fn ec2_server(
        &mut self,
        file: &str,
        p_at: &Origin,
        h: &raw::HostFile,
        s: &raw::ServerSpec,
        settings: &Settings,
        networks: &[ServerNetwork],
    ) -> Option<Ec2Server> {
        let provider = h.provider.value;
        if provider != ProviderKind::Ec2 {
            let keys = [
                s.root_volume.as_ref().map(|_| "root_volume"),
                s.termination_protection
                    .as_ref()
                    .map(|_| "termination_protection"),
                s.egress.as_ref().map(|_| "egress"),
            ];
            for key in keys.into_iter().flatten() {
                self.err(p_at.error(
                    "invalid-key",
                    format!(
                        "`server.{key}` is an EC2 setting, not a {} one",
                        provider_name(provider)
                    ),
                ));
            }
            return None;
        }
        let Some(aws) = &settings.ec2 else {
            self.err(p_at.error("missing-key", "this host uses provider: ec2 but tidekeeper.yaml has no providers.ec2")
                .with_help("add providers: {ec2: {region: eu-central-1}} to tidekeeper.yaml (the region may also come from AWS_REGION or the AWS profile: `ec2: {}`)"));
            return None;
        };
        self.ec2_ids(file, s);
        if let (Some(r), Some(want)) = (&s.region, &aws.region)
            && &r.value != want
        {
            self.err(at(file, r).error(
                "invalid-value",
                format!("region {:?} is not providers.ec2.region ({want})", r.value),
            ).with_help("a fleet's EC2 instances live in the region of providers.ec2; remove `region:` or make them equal"));
        }
        let private_ip = self.ec2_private_ip(file, h, s);
        let in_network = self.ec2_network(file, s, settings, networks);
        // In one of the network's private subnets: no public address.
        let private_subnet = in_network.as_ref().is_some_and(|(cidr, _)| {
            networks.first().is_some_and(|n| {
                settings
                    .networks
                    .iter()
                    .any(|x| x.name == n.name && x.subnets.contains(cidr))
            })
        });
        if let (Some(v), Some((cidr, _))) = (s.static_ip.as_ref().filter(|v| v.value), &in_network)
            && private_subnet
        {
            self.err(at(file, v).error("invalid-value", format!("an Elastic IP reaches an instance only through an internet gateway, and private subnet {cidr} has no route to one"))
                .with_help("put the host in one of the network's public_subnets, or leave out static_ip"));
        }
        let private_ip = private_ip.or_else(|| in_network.as_ref().and_then(|(_, ip)| ip.clone()));
        let (root_gb, root_type) = self.ec2_root(file, s);
        let egress = self.ec2_egress(file, p_at, s);
        Some(Ec2Server {
            egress,
            egress_origin: s
                .egress
                .as_ref()
                .and_then(|r| r.first())
                .map(|r| at(file, &r.port))
                .or_else(|| s.egress.as_ref().map(|_| p_at.clone())),
            subnet: opt(&s.subnet).unwrap_or_default(),
            private_subnet,
            network_subnet: in_network.map(|(cidr, _)| cidr),
            private_ip,
            root_gb,
            root_type,
            termination_protection: s.termination_protection.as_ref().is_some_and(|t| t.value),
        })
    }

    /// `server.egress`: the outbound rules of the host's security group,
    /// which exists only where `server.firewall` makes it.
    fn ec2_egress(
        &mut self,
        file: &str,
        p_at: &Origin,
        s: &raw::ServerSpec,
    ) -> Option<Vec<CloudPort>> {
        let rules = s.egress.as_ref()?;
        if s.firewall.is_empty() {
            self.err(p_at.error(
                "missing-key",
                "`server.egress` needs `server.firewall`: both are rules of the host's own security group, which tidekeeper makes only with its inbound rules",
            ).with_help("add server.firewall with the SSH rule tidekeeper needs, e.g. - {port: \"22\", from: [YOUR_CIDR]}"));
        }
        Some(
            rules
                .iter()
                .filter_map(|r| self.cloud_rule(file, &r.port, r.proto.as_ref(), &r.to))
                .collect(),
        )
    }

    /// The instance type, AMI and subnet look like EC2's ids.
    fn ec2_ids(&mut self, file: &str, s: &raw::ServerSpec) {
        if let Some(image) = &s.image
            && crate::model::desired::ami_filter(&image.value).is_none()
            && !image.value.starts_with("ami-")
        {
            self.err(at(file, image).error(
                "invalid-value",
                format!(
                    "{:?} is not an AMI id like ami-0abcdef1234567890, nor OWNER/NAME",
                    image.value
                ),
            ).with_help("write an AMI id, or the owner's account id and a name pattern for the newest match, e.g. 136693071363/debian-12-amd64-* (Debian's own images)"));
        }
        let checks: [(&Option<S<String>>, &str, &str); 3] = [
            (&s.image, "ami-", "an AMI id like ami-0abcdef1234567890"),
            (
                &s.subnet,
                "subnet-",
                "a subnet id like subnet-0123456789abcdef0",
            ),
            (&s.server_type, "", "an instance type like t3.small"),
        ];
        for (v, prefix, what) in checks {
            let Some(v) = v else { continue };
            if prefix == "ami-" && !v.value.starts_with(prefix) {
                continue; // a filter, or reported above
            }
            let rest = v.value.strip_prefix(prefix);
            let ok = match rest {
                Some(r) if prefix.is_empty() => r.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && r.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                }),
                Some(r) => !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit()),
                None => false,
            };
            if !ok {
                self.err(
                    at(file, v).error("invalid-value", format!("{:?} is not {what}", v.value)),
                );
            }
        }
    }

    /// A fixed private address is one IPv4 address, for one instance.
    /// The subnet (CIDR) and fixed address a host in a network of
    /// tidekeeper.yaml (`server.networks`) gets: the subnet holding its
    /// `ip`, else the network's first private subnet, else its first public
    /// one. `subnet`/`private_ip` then have no say.
    fn ec2_network(
        &mut self,
        file: &str,
        s: &raw::ServerSpec,
        settings: &Settings,
        networks: &[ServerNetwork],
    ) -> Option<(String, Option<String>)> {
        let n = networks.first()?;
        for (key, v) in [("subnet", &s.subnet), ("private_ip", &s.private_ip)] {
            if let Some(v) = v {
                self.err(at(file, v).error("invalid-key", format!("`{key}` and `networks` both place the instance; in network {} it gets its subnet from tidekeeper.yaml", n.name))
                    .with_help("remove `subnet`/`private_ip` and write the address as networks: [{name: NETWORK, ip: ADDRESS}]"));
            }
        }
        let net = settings.networks.iter().find(|x| x.name == n.name)?;
        let subnets = net.subnets.iter().chain(&net.public_subnets);
        let holds = |c: &&String| {
            let ip = n.ip.as_deref().and_then(check::Net::parse);
            check::Net::parse(c)
                .zip(ip)
                .is_some_and(|(c, ip)| c.contains(&ip))
        };
        let cidr = match &n.ip {
            Some(_) => subnets.clone().find(holds),
            None => subnets.clone().next(),
        };
        Some((cidr?.clone(), n.ip.clone()))
    }

    fn ec2_private_ip(
        &mut self,
        file: &str,
        h: &raw::HostFile,
        s: &raw::ServerSpec,
    ) -> Option<String> {
        let ip = s.private_ip.as_ref()?;
        if ip.value.parse::<std::net::Ipv4Addr>().is_err() {
            self.err(
                at(file, ip)
                    .error(
                        "invalid-value",
                        format!("private_ip {:?} is not an IPv4 address", ip.value),
                    )
                    .with_help("write one address inside the subnet's range, e.g. 10.20.13.140"),
            );
        }
        if let Some(c) = &h.count
            && c.value > 1
        {
            self.err(at(file, ip).error(
                "invalid-value",
                "a fixed private_ip is for a single instance, not a count: group",
            ));
        }
        Some(ip.value.clone())
    }

    /// `root_volume`: a size EBS takes and a known type (default gp3).
    fn ec2_root(&mut self, file: &str, s: &raw::ServerSpec) -> (Option<u32>, String) {
        let Some(r) = &s.root_volume else {
            return (None, "gp3".into());
        };
        if let Some(g) = &r.size_gb
            && !(1..=16_384).contains(&g.value)
        {
            self.err(at(file, g).error(
                "invalid-value",
                format!("root_volume.size_gb {} is not from 1 to 16384", g.value),
            ));
        }
        if let Some(t) = &r.volume_type
            && !VOLUME_TYPES.contains(&t.value.as_str())
        {
            self.err(
                at(file, t)
                    .error(
                        "invalid-value",
                        format!("root_volume.type {:?} is not an EBS volume type", t.value),
                    )
                    .with_help(format!("one of {}", VOLUME_TYPES.join(", "))),
            );
        }
        (
            r.size_gb.as_ref().map(|g| g.value),
            opt(&r.volume_type).unwrap_or_else(|| "gp3".into()),
        )
    }
}
