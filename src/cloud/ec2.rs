//! Amazon EC2 through `aws-sdk-ec2` (in the `tidekeeper-ec2` crate, so the
//! SDK stays out of this crate's rebuilds).
//!
//! An instance is the host's when it carries the ownership tags and
//! `tidekeeper-host: <host>` (its `Name` tag says the same, for the
//! console). A new instance type is set in place: stop, modify, start; the
//! EBS volumes and their data stay. `server.firewall` rules become the
//! ingress of a security group of the host's own, `tk-<fleet>-<host>`, in
//! the subnet's VPC. Prices come from the dated table in [`super::ec2_prices`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidekeeper_ec2 as ec2;

use super::desired::{DesiredServer, fold_any};
use super::{
    ACTION_TIMEOUT, CloudError, FLEET, Fut, HOST_NAME, ObservedServer, PowerState, PriceList,
    Provider, Snapshot,
};
use crate::model::desired::{CloudPort, Lightsail as Settings, ProviderKind};

mod network;

const NAME: &str = "ec2";
const POLL: Duration = Duration::from_millis(500);
/// The console's name for an instance.
const NAME_TAG: &str = "Name";

fn api(what: &str, e: ec2::Error) -> CloudError {
    super::aws::error(NAME, what, e)
}

fn state(s: &str) -> PowerState {
    match s {
        "running" => PowerState::Running,
        "stopped" => PowerState::Off,
        "pending" => PowerState::Starting,
        "stopping" | "shutting-down" => PowerState::Stopping,
        other => PowerState::Other(other.to_string()),
    }
}

pub(crate) fn group_name(fleet: &str, host: &str) -> String {
    format!("tk-{fleet}-{host}")
}

/// Ingress rules as `server.firewall` writes them.
fn ports(list: &[ec2::Rule]) -> Vec<CloudPort> {
    let mut out = Vec::new();
    // A rule for other groups or prefix lists only has no ranges: it is not
    // "from everywhere", and server.firewall cannot say it.
    for r in list
        .iter()
        .filter(|r| !r.cidrs.is_empty() || !r.ipv6_cidrs.is_empty())
    {
        let mut from = r.cidrs.clone();
        from.extend(r.ipv6_cidrs.iter().cloned());
        let (proto, a, b) = match r.protocol.as_str() {
            "-1" => ("any".to_string(), 1, 65535),
            p => (p.to_string(), r.from.max(0) as u16, r.to.max(0) as u16),
        };
        out.push(CloudPort {
            from_port: a,
            to_port: b,
            proto,
            from,
        });
    }
    let mut out = fold_any(out);
    out.sort_by(|a, b| (a.from_port, a.to_port, &a.proto).cmp(&(b.from_port, b.to_port, &b.proto)));
    out
}

/// `server.firewall` in EC2's terms: `any` is a tcp and a udp rule (EC2's
/// `-1` would also open ICMP and every other protocol).
pub(crate) fn rules(list: &[CloudPort]) -> Vec<ec2::Rule> {
    let mut out = Vec::new();
    for r in list {
        let protos: &[&str] = match r.proto.as_str() {
            "any" => &["tcp", "udp"],
            "udp" => &["udp"],
            _ => &["tcp"],
        };
        for p in protos {
            out.push(ec2::Rule {
                protocol: p.to_string(),
                from: r.from_port.into(),
                to: r.to_port.into(),
                cidrs: r
                    .from
                    .iter()
                    .filter(|c| !c.contains(':'))
                    .cloned()
                    .collect(),
                ipv6_cidrs: r.from.iter().filter(|c| c.contains(':')).cloned().collect(),
            });
        }
    }
    out.sort();
    out
}

/// Which rules of a security group.
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// Each rule split into one per address range, in one order.
fn atoms(list: &[ec2::Rule]) -> Vec<ec2::Rule> {
    let mut out: Vec<ec2::Rule> = list
        .iter()
        .flat_map(|r| {
            let one = |cidrs: Vec<String>, ipv6_cidrs: Vec<String>| ec2::Rule {
                cidrs,
                ipv6_cidrs,
                ..r.clone()
            };
            let v4 = r
                .cidrs
                .iter()
                .map(move |c| one(vec![c.clone()], Vec::new()));
            let v6 = r
                .ipv6_cidrs
                .iter()
                .map(move |c| one(Vec::new(), vec![c.clone()]));
            v4.chain(v6).collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn tag_is(tags: &[(String, String)], key: &str, value: &str) -> bool {
    tags.iter().any(|(k, v)| k == key && v == value)
}

fn owned(tags: &[(String, String)], fleet: &str) -> bool {
    super::owned(tags.iter().map(|(k, v)| (k, v)), fleet)
}

/// The host an instance is for: its tag, else its `Name`, else its id.
fn host_of(i: &ec2::Instance) -> &str {
    i.tag(HOST_NAME)
        .or_else(|| i.tag(NAME_TAG))
        .unwrap_or(&i.id)
}

pub(crate) struct Ec2 {
    settings: Settings,
    client: tokio::sync::OnceCell<ec2::Client>,
}

impl Ec2 {
    /// A client for `s`. Credentials named in tidekeeper.yaml must be set
    /// now; the SDK's chain is asked on the first call.
    pub(crate) fn from_env(s: &Settings) -> Result<Ec2, CloudError> {
        super::aws::check_env(NAME, s)?;
        Ok(Ec2 {
            settings: s.clone(),
            client: tokio::sync::OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<&ec2::Client, CloudError> {
        self.client
            .get_or_try_init(|| async {
                ec2::Client::new(super::aws::settings(NAME, &self.settings)?)
                    .await
                    .map_err(|e| api("setting up the client", e))
            })
            .await
    }

    fn region(&self) -> String {
        self.settings.region.clone().unwrap_or_default()
    }

    async fn wait_state(&self, id: &str, want: &str) -> Result<ec2::Instance, CloudError> {
        let start = Instant::now();
        loop {
            if let Some(i) = self
                .client()
                .await?
                .instance(id)
                .await
                .map_err(|e| api("reading the instance", e))?
                && i.state == want
            {
                return Ok(i);
            }
            if start.elapsed() > ACTION_TIMEOUT {
                return Err(CloudError::Timeout {
                    provider: NAME,
                    what: format!("instance {id} to be {want}"),
                    after: ACTION_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn observed(
        &self,
        i: &ec2::Instance,
        groups: &[ec2::SecurityGroup],
        protected: bool,
        volume_gb: Option<u32>,
    ) -> ObservedServer {
        let mut labels: BTreeMap<String, String> = i.tags.iter().cloned().collect();
        labels.remove(HOST_NAME);
        labels.remove(NAME_TAG);
        let host = host_of(i).to_string();
        // What reaches the instance is what all its groups admit together,
        // whoever made them (an imported instance keeps its own until its
        // firewall is first changed).
        let ingress: Vec<ec2::Rule> = groups
            .iter()
            .filter(|g| i.security_groups.contains(&g.id))
            .flat_map(|g| g.ingress.iter().cloned())
            .collect();
        let firewall = (!i.security_groups.is_empty()).then(|| ports(&ingress));
        let egress: Vec<ec2::Rule> = groups
            .iter()
            .filter(|g| i.security_groups.contains(&g.id))
            .flat_map(|g| g.egress.iter().cloned())
            .collect();
        let egress = (!i.security_groups.is_empty()).then(|| ports(&egress));
        ObservedServer {
            provider: ProviderKind::Ec2,
            id: i.id.clone(),
            name: host,
            size: i.instance_type.clone(),
            image: Some(i.image.clone()),
            location: self.region(),
            labels,
            state: state(&i.state),
            address: i.public_ip.clone().or_else(|| i.private_ip.clone()),
            private_address: i.private_ip.clone(),
            networks: Vec::new(),
            firewall,
            static_ip: false,
            delete_protection: protected,
            subnet: i.subnet.clone(),
            volume_gb,
            public_ipv4: i.public_ip.is_some(),
            egress,
        }
    }

    /// The key pair for `entry`: a name as it is; a public key imported once
    /// as `tk-<fleet>-<fingerprint>`.
    async fn key_pair(&self, fleet: &str, entry: &str) -> Result<String, CloudError> {
        let Some(name) = super::desired::uploaded_key_name(fleet, entry) else {
            return Ok(entry.to_string());
        };
        let client = self.client().await?;
        let have = client
            .key_pairs()
            .await
            .map_err(|e| api("listing key pairs", e))?;
        if !have.contains(&name) {
            let tags: Vec<(String, String)> =
                super::desired::ownership(fleet).into_iter().collect();
            client
                .import_key_pair(&name, entry, &tags)
                .await
                .map_err(|e| api("importing the key pair", e))?;
        }
        Ok(name)
    }

    /// The host's security group, made (in `subnet`'s VPC) when missing,
    /// with exactly `want`'s inbound rules and, where `egress` is given,
    /// exactly its outbound rules; its id.
    async fn security_group(
        &self,
        fleet: &str,
        host: &str,
        subnet: &str,
        want: &[CloudPort],
        egress: Option<&[CloudPort]>,
    ) -> Result<String, CloudError> {
        let client = self.client().await?;
        let name = group_name(fleet, host);
        let groups = client
            .security_groups()
            .await
            .map_err(|e| api("listing security groups", e))?;
        let subnets = client
            .subnets()
            .await
            .map_err(|e| api("listing subnets", e))?;
        let vpc = subnets
            .iter()
            .find(|s| s.id == subnet)
            .map(|s| s.vpc.clone())
            .ok_or_else(|| {
                CloudError::api(
                    NAME,
                    "finding the security group's VPC",
                    format!("subnet {subnet} does not exist in this region"),
                )
            })?;
        // A group belongs to one VPC: a host that moved to another network
        // gets a group of its own there (the old one goes with its VPC).
        let (id, have, have_out) = match groups.iter().find(|g| g.name == name && g.vpc == vpc) {
            Some(g) => (g.id.clone(), g.ingress.clone(), g.egress.clone()),
            None => {
                let tags: Vec<(String, String)> =
                    super::desired::ownership(fleet).into_iter().collect();
                let id = client
                    .create_security_group(&name, &format!("tidekeeper: {host}"), &vpc, &tags)
                    .await
                    .map_err(|e| api("creating the security group", e))?;
                // EC2 gives a new group its default outbound rules.
                let out = match egress {
                    Some(_) => self.new_group_egress(&id).await?,
                    None => Vec::new(),
                };
                (id, Vec::new(), out)
            }
        };
        // Open first, then close: SSH is never shut in between.
        self.sync_rules(&id, &rules(want), &have, Direction::In)
            .await?;
        if let Some(egress) = egress {
            self.sync_rules(&id, &rules(egress), &have_out, Direction::Out)
                .await?;
        }
        Ok(id)
    }

    /// Make `group`'s rules in `direction` exactly `want`, from `have`:
    /// address by address (EC2 lists a port's ranges as one rule), adding
    /// before removing.
    async fn sync_rules(
        &self,
        group: &str,
        want: &[ec2::Rule],
        have: &[ec2::Rule],
        direction: Direction,
    ) -> Result<(), CloudError> {
        let client = self.client().await?;
        let (want, have) = (atoms(want), atoms(have));
        let add: Vec<ec2::Rule> = want.iter().filter(|r| !have.contains(r)).cloned().collect();
        let drop: Vec<ec2::Rule> = have.iter().filter(|r| !want.contains(r)).cloned().collect();
        match direction {
            Direction::In => {
                client
                    .authorize_ingress(group, &add)
                    .await
                    .map_err(|e| api("adding security group rules", e))?;
                client
                    .revoke_ingress(group, &drop)
                    .await
                    .map_err(|e| api("removing security group rules", e))?;
            }
            Direction::Out => {
                client
                    .authorize_egress(group, &add)
                    .await
                    .map_err(|e| api("adding outbound rules", e))?;
                client
                    .revoke_egress(group, &drop)
                    .await
                    .map_err(|e| api("removing outbound rules", e))?;
            }
        }
        Ok(())
    }

    /// The outbound rules EC2 gave the group just made: read back (a new
    /// group may take a moment to be listed), else EC2's documented
    /// default, everything out over IPv4.
    async fn new_group_egress(&self, id: &str) -> Result<Vec<ec2::Rule>, CloudError> {
        let client = self.client().await?;
        for _ in 0..10 {
            let groups = client
                .security_groups()
                .await
                .map_err(|e| api("listing security groups", e))?;
            if let Some(g) = groups.into_iter().find(|g| g.id == id) {
                return Ok(g.egress);
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(vec![ec2::Rule {
            protocol: "-1".into(),
            from: -1,
            to: -1,
            cidrs: vec!["0.0.0.0/0".into()],
            ipv6_cidrs: Vec::new(),
        }])
    }

    /// Host `host`'s Elastic IP, associated with instance `id`: its own
    /// address (tagged with the host), allocated once and kept while the
    /// host is in the config, so a replaced instance gets it back. Its
    /// public address.
    async fn elastic_ip(&self, fleet: &str, host: &str, id: &str) -> Result<String, CloudError> {
        let client = self.client().await?;
        let addresses = client
            .addresses()
            .await
            .map_err(|e| api("listing Elastic IPs", e))?;
        let mine = addresses
            .into_iter()
            .find(|a| owned(&a.tags, fleet) && tag_is(&a.tags, HOST_NAME, host));
        let a = match mine {
            Some(a) => a,
            None => {
                let mut tags: Vec<(String, String)> =
                    super::desired::ownership(fleet).into_iter().collect();
                tags.push((HOST_NAME.into(), host.into()));
                tags.push((NAME_TAG.into(), host.into()));
                client
                    .allocate_address(&tags)
                    .await
                    .map_err(|e| api("allocating the Elastic IP", e))?
            }
        };
        if a.instance.as_deref() != Some(id) {
            client
                .associate_address(&a.allocation, id)
                .await
                .map_err(|e| api("associating the Elastic IP", e))?;
        }
        Ok(a.public_ip)
    }

    /// Give back host `host`'s Elastic IP (its instance is gone).
    async fn release_elastic_ip(&self, fleet: &str, host: &str) -> Result<(), CloudError> {
        let client = self.client().await?;
        let addresses = client
            .addresses()
            .await
            .map_err(|e| api("listing Elastic IPs", e))?;
        for a in addresses
            .iter()
            .filter(|a| owned(&a.tags, fleet) && tag_is(&a.tags, HOST_NAME, host))
        {
            if let Some(assoc) = &a.association {
                client
                    .disassociate_address(assoc)
                    .await
                    .map_err(|e| api("detaching the Elastic IP", e))?;
            }
            client
                .release_address(&a.allocation)
                .await
                .map_err(|e| api("releasing the Elastic IP", e))?;
        }
        Ok(())
    }

    async fn launch(
        &self,
        want: &DesiredServer,
        user_data: &str,
    ) -> Result<ObservedServer, CloudError> {
        let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
        let spec = want.ec2.clone().ok_or_else(|| {
            CloudError::Refused(format!(
                "{}: no EC2 settings (subnet) for the instance",
                want.host
            ))
        })?;
        let mut tags: Vec<(String, String)> = want.labels.clone().into_iter().collect();
        tags.push((HOST_NAME.into(), want.host.clone()));
        tags.push((NAME_TAG.into(), want.host.clone()));
        let key = match want.ssh_keys.first() {
            Some(entry) => Some(self.key_pair(&fleet, entry).await?),
            None => None,
        };
        // In a network of tidekeeper.yaml, its subnet there (made first).
        let subnet = match (&spec.network_subnet, want.networks.first()) {
            (Some(cidr), Some(n)) => self.subnet_in(&fleet, &n.name, cidr).await?,
            _ => spec.subnet.clone(),
        };
        let groups = if want.firewall.is_empty() {
            Vec::new()
        } else {
            vec![
                self.security_group(
                    &fleet,
                    &want.host,
                    &subnet,
                    &want.firewall,
                    spec.egress.as_deref(),
                )
                .await?,
            ]
        };
        let client = self.client().await?;
        // An earlier run may have launched it and stopped before recording
        // it: the instance is found by its tags, not launched twice.
        let all = client
            .instances()
            .await
            .map_err(|e| api("listing instances", e))?;
        if let Some(i) = all
            .iter()
            .find(|i| owned(&i.tags, &fleet) && i.tag(HOST_NAME) == Some(want.host.as_str()))
        {
            tracing::info!(host = %want.host, instance = %i.id, "the instance was created by an earlier attempt; using it");
            let i = self.wait_state(&i.id, "running").await?;
            let sgs = client
                .security_groups()
                .await
                .map_err(|e| api("listing security groups", e))?;
            return Ok(self.observed(&i, &sgs, spec.termination_protection, spec.root_gb));
        }
        let root = client
            .image_root_device(&want.image)
            .await
            .map_err(|e| api("reading the AMI", e))?
            .unwrap_or_else(|| "/dev/xvda".into());
        let id = client
            .run(&ec2::Launch {
                instance_type: &want.size,
                image: &want.image,
                subnet: Some(&subnet),
                private_ip: spec.private_ip.as_deref(),
                key_name: key.as_deref(),
                user_data,
                security_groups: &groups,
                root_device: &root,
                root_gb: spec.root_gb.map(|g| g as i32),
                root_type: Some(&spec.root_type),
                termination_protection: spec.termination_protection,
                tags: &tags,
            })
            .await
            .map_err(|e| api("creating the instance", e))?;
        let i = self.wait_state(&id, "running").await?;
        let sgs = client
            .security_groups()
            .await
            .map_err(|e| api("listing security groups", e))?;
        Ok(self.observed(&i, &sgs, spec.termination_protection, spec.root_gb))
    }
}

impl Provider for Ec2 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ec2
    }

    fn servers(&self) -> Fut<'_, Vec<ObservedServer>> {
        Box::pin(async move {
            let client = self.client().await?;
            let list = client
                .instances()
                .await
                .map_err(|e| api("listing instances", e))?;
            let groups = client
                .security_groups()
                .await
                .map_err(|e| api("listing security groups", e))?;
            // Root volumes are billed by the GB: their sizes, in one call.
            let roots: Vec<String> = list.iter().filter_map(|i| i.root_volume.clone()).collect();
            let volumes = if roots.is_empty() {
                Vec::new()
            } else {
                client
                    .volumes(&roots)
                    .await
                    .map_err(|e| api("listing volumes", e))?
            };
            // Instances in tidekeeper's networks: which network each is in.
            let subnets = client
                .subnets()
                .await
                .map_err(|e| api("listing subnets", e))?;
            let networks = network::subnet_networks(&subnets);
            let elastic = match client.addresses().await {
                Ok(a) => a,
                // An older IAM policy: no Elastic IPs are known.
                Err(e) if e.code == "UnauthorizedOperation" => {
                    tracing::warn!("ec2: not allowed to list Elastic IPs (ec2:DescribeAddresses)");
                    Vec::new()
                }
                Err(e) => return Err(api("listing Elastic IPs", e)),
            };
            let mut out = Vec::new();
            for i in &list {
                let protected = client
                    .termination_protection(&i.id)
                    .await
                    .map_err(|e| api("reading termination protection", e))?;
                let gb = volumes
                    .iter()
                    .find(|v| i.root_volume.as_ref() == Some(&v.id))
                    .and_then(|v| u32::try_from(v.size_gb).ok());
                let mut o = self.observed(i, &groups, protected, gb);
                o.static_ip = elastic.iter().any(|a| a.instance.as_ref() == Some(&i.id));
                if let (Some(n), Some(ip)) = (
                    i.subnet.as_ref().and_then(|s| networks.get(s)),
                    &i.private_ip,
                ) {
                    o.networks = vec![(n.clone(), ip.clone())];
                }
                out.push(o);
            }
            Ok(out)
        })
    }

    fn networks(&self) -> Fut<'_, Vec<super::ObservedNetwork>> {
        Box::pin(self.list_networks())
    }

    fn ensure_network<'a>(
        &'a self,
        fleet: &'a str,
        want: &'a crate::model::desired::Network,
    ) -> Fut<'a, ()> {
        Box::pin(self.make_network(fleet, want))
    }

    fn delete_network<'a>(&'a self, have: &'a super::ObservedNetwork) -> Fut<'a, ()> {
        Box::pin(self.remove_network(have))
    }

    fn images<'a>(&'a self, filters: &'a [String], ids: &'a [String]) -> Fut<'a, super::Images> {
        Box::pin(async move {
            let client = self.client().await?;
            let info = |i: ec2::Image| super::ImageInfo {
                id: i.id,
                name: i.name,
                owner: i.owner,
                created: i.created,
                architecture: i.architecture,
            };
            let mut out = super::Images::new();
            for f in filters {
                let Some((owner, name)) = crate::model::desired::ami_filter(f) else {
                    continue;
                };
                let found = client
                    .images_named(owner, name)
                    .await
                    .map_err(|e| api(&format!("looking up the images {f}"), e))?;
                out.insert(f.clone(), found.into_iter().next().map(info));
            }
            let ids: Vec<String> = ids
                .iter()
                .filter(|i| i.starts_with("ami-"))
                .cloned()
                .collect();
            let known = client
                .images(&ids)
                .await
                .map_err(|e| api("describing the servers' images", e))?;
            for i in known {
                out.insert(i.id.clone(), Some(info(i)));
            }
            Ok(out)
        })
    }

    fn prices(&self) -> Fut<'_, PriceList> {
        Box::pin(async move {
            let mut monthly = BTreeMap::new();
            for r in super::ec2_prices::REGIONS {
                for (t, h) in r.hourly {
                    monthly.insert(
                        (t.to_string(), r.region.to_string()),
                        h * super::ec2_prices::HOURS_PER_MONTH,
                    );
                }
            }
            Ok(PriceList {
                currency: "USD",
                monthly,
                // A stopped instance bills its EBS volumes only.
                bills_stopped: false,
                disk_gb: BTreeMap::new(),
                attached: super::ec2_prices::REGIONS
                    .iter()
                    .map(|r| {
                        let a = super::AttachedPrices {
                            volume_gb: r.gp3_gb_month,
                            ipv4: r.ipv4_hour * super::ec2_prices::HOURS_PER_MONTH,
                            nat: r.nat_hour * super::ec2_prices::HOURS_PER_MONTH,
                        };
                        (r.region.to_string(), a)
                    })
                    .collect(),
            })
        })
    }

    fn create<'a>(
        &'a self,
        want: &'a DesiredServer,
        user_data: &'a str,
    ) -> Fut<'a, ObservedServer> {
        Box::pin(async move {
            let mut o = self.launch(want, user_data).await?;
            let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
            if want.static_ip {
                o.address = Some(self.elastic_ip(&fleet, &want.host, &o.id).await?);
                o.static_ip = true;
            } else {
                // A replaced server's address it no longer asks for.
                self.release_elastic_ip(&fleet, &want.host).await?;
            }
            Ok(o)
        })
    }

    fn adopt<'a>(&'a self, have: &'a ObservedServer, fleet: &'a str, host: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let mut tags: Vec<(String, String)> =
                super::desired::ownership(fleet).into_iter().collect();
            tags.push((HOST_NAME.into(), host.to_string()));
            tags.push((NAME_TAG.into(), host.to_string()));
            self.client()
                .await?
                .tag(&have.id, &tags)
                .await
                .map_err(|e| api("tagging the instance", e))
        })
    }

    fn login<'a>(&'a self, have: &'a ObservedServer) -> Fut<'a, Option<&'static str>> {
        Box::pin(async move {
            let Some(image) = &have.image else {
                return Ok(None);
            };
            let name = self
                .client()
                .await?
                .image_name(image)
                .await
                .map_err(|e| api("reading the image", e))?;
            Ok(name.as_deref().and_then(crate::model::desired::ami_login))
        })
    }

    fn update<'a>(&'a self, have: &'a ObservedServer, want: &'a DesiredServer) -> Fut<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let stale: Vec<String> = have
                .labels
                .keys()
                .filter(|k| !want.labels.contains_key(*k) && !super::is_host_key_label(k))
                .cloned()
                .collect();
            if !stale.is_empty() {
                client
                    .untag(&have.id, &stale)
                    .await
                    .map_err(|e| api("removing tags", e))?;
            }
            let changed: Vec<(String, String)> = want
                .labels
                .iter()
                .filter(|(k, v)| have.labels.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !changed.is_empty() {
                client
                    .tag(&have.id, &changed)
                    .await
                    .map_err(|e| api("tagging the instance", e))?;
            }
            if let Some(spec) = &want.ec2 {
                let differ = |have: Option<&Vec<CloudPort>>, want: &[CloudPort]| {
                    !have.is_some_and(|h| super::desired::same_rules(h, want))
                };
                let inbound = differ(have.firewall.as_ref(), &want.firewall);
                let outbound = spec
                    .egress
                    .as_ref()
                    .is_some_and(|e| differ(have.egress.as_ref(), e));
                if !want.firewall.is_empty() && (inbound || outbound) {
                    let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
                    let id = self
                        .security_group(
                            &fleet,
                            &want.host,
                            have.subnet.as_deref().unwrap_or(&spec.subnet),
                            &want.firewall,
                            spec.egress.as_deref(),
                        )
                        .await?;
                    // The host's group is its only one: what server.firewall
                    // says is all that reaches it (an adopted instance's own
                    // groups are detached here, not deleted).
                    let attached = client
                        .instance(&have.id)
                        .await
                        .map_err(|e| api("reading the instance", e))?
                        .map(|i| i.security_groups)
                        .unwrap_or_default();
                    if attached != [id.clone()] {
                        client
                            .set_groups(&have.id, std::slice::from_ref(&id))
                            .await
                            .map_err(|e| api("attaching the security group", e))?;
                    }
                }
                if want.static_ip && !have.static_ip {
                    let fleet = want.labels.get(FLEET).cloned().unwrap_or_default();
                    self.elastic_ip(&fleet, &want.host, &have.id).await?;
                }
                if spec.termination_protection != have.delete_protection {
                    client
                        .set_termination_protection(&have.id, spec.termination_protection)
                        .await
                        .map_err(|e| api("setting termination protection", e))?;
                }
            }
            Ok(())
        })
    }

    fn resize<'a>(&'a self, have: &'a ObservedServer, size: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let was_running = have.state != PowerState::Off;
            if was_running {
                client
                    .stop(&have.id)
                    .await
                    .map_err(|e| api("stopping the instance", e))?;
                self.wait_state(&have.id, "stopped").await?;
            }
            client
                .set_type(&have.id, size)
                .await
                .map_err(|e| api("changing the instance type", e))?;
            if was_running {
                client
                    .start(&have.id)
                    .await
                    .map_err(|e| api("starting the instance", e))?;
                self.wait_state(&have.id, "running").await?;
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, have: &'a ObservedServer, keep_address: bool) -> Fut<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            match client.terminate(&have.id).await {
                Ok(()) => {}
                Err(e) if e.not_found() => return Ok(()),
                Err(e) if e.code == "OperationNotPermitted" => {
                    return Err(CloudError::Refused(format!(
                        "{}: EC2 refuses to terminate instance {}: termination protection is on; \
                         set `termination_protection: false` on the host and apply that first",
                        have.name, have.id
                    )));
                }
                Err(e) => return Err(api("terminating the instance", e)),
            }
            self.wait_state(&have.id, "terminated").await?;
            // A replaced server's Elastic IP waits for the new instance.
            if have.static_ip && !keep_address {
                let fleet = have.labels.get(FLEET).cloned().unwrap_or_default();
                self.release_elastic_ip(&fleet, &have.name).await?;
            }
            Ok(())
        })
    }

    fn power<'a>(&'a self, have: &'a ObservedServer, on: bool) -> Fut<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let (r, want, what) = if on {
                (
                    client.start(&have.id).await,
                    "running",
                    "starting the instance",
                )
            } else {
                (
                    client.stop(&have.id).await,
                    "stopped",
                    "stopping the instance",
                )
            };
            r.map_err(|e| api(what, e))?;
            self.wait_state(&have.id, want).await.map(|_| ())
        })
    }

    fn snapshot<'a>(
        &'a self,
        have: &'a ObservedServer,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Snapshot> {
        Box::pin(async move {
            let client = self.client().await?;
            let i = client
                .instance(&have.id)
                .await
                .map_err(|e| api("reading the instance", e))?
                .ok_or_else(|| {
                    CloudError::api(
                        NAME,
                        "creating a snapshot",
                        format!("instance {} is gone", have.id),
                    )
                })?;
            let volume = i.root_volume.ok_or_else(|| {
                CloudError::api(
                    NAME,
                    "creating a snapshot",
                    format!("instance {} has no EBS root volume", have.id),
                )
            })?;
            let mut tags: Vec<(String, String)> = labels.clone().into_iter().collect();
            tags.push((HOST_NAME.into(), have.name.clone()));
            tags.push((NAME_TAG.into(), name.to_string()));
            let id = client
                .create_snapshot(&volume, name, &tags)
                .await
                .map_err(|e| api("creating a snapshot", e))?;
            let start = Instant::now();
            loop {
                let all = client
                    .snapshots()
                    .await
                    .map_err(|e| api("listing snapshots", e))?;
                if let Some(s) = all.iter().find(|s| s.id == id) {
                    match s.state.as_str() {
                        "completed" => return Ok(snapshot(s, &have.id)),
                        "error" => {
                            return Err(CloudError::api(
                                NAME,
                                "creating a snapshot",
                                format!("snapshot {id} failed"),
                            ));
                        }
                        _ => {}
                    }
                }
                if start.elapsed() > ACTION_TIMEOUT {
                    return Err(CloudError::Timeout {
                        provider: NAME,
                        what: format!("snapshot {name}"),
                        after: ACTION_TIMEOUT,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }

    fn snapshots<'a>(
        &'a self,
        server: &'a ObservedServer,
        labels: &'a BTreeMap<String, String>,
    ) -> Fut<'a, Vec<Snapshot>> {
        Box::pin(async move {
            let all = self
                .client()
                .await?
                .snapshots()
                .await
                .map_err(|e| api("listing snapshots", e))?;
            let mut out: Vec<Snapshot> = all
                .iter()
                .filter(|s| {
                    s.tags
                        .iter()
                        .any(|(k, v)| k == HOST_NAME && *v == server.name)
                })
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.tags.iter().any(|(a, b)| a == k && b == v))
                })
                .map(|s| snapshot(s, &server.id))
                .collect();
            out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
            Ok(out)
        })
    }

    fn delete_snapshot<'a>(&'a self, snapshot: &'a Snapshot) -> Fut<'a, ()> {
        Box::pin(async move {
            match self.client().await?.delete_snapshot(&snapshot.id).await {
                Ok(()) => Ok(()),
                Err(e) if e.not_found() => Ok(()),
                Err(e) => Err(api("deleting a snapshot", e)),
            }
        })
    }
}

fn snapshot(s: &ec2::Snapshot, server: &str) -> Snapshot {
    Snapshot {
        id: s.id.clone(),
        name: s
            .tags
            .iter()
            .find(|(k, _)| k == NAME_TAG)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| s.id.clone()),
        server: server.to_string(),
        created: chrono::DateTime::from_timestamp_millis(s.started_ms).unwrap_or_default(),
        labels: s
            .tags
            .iter()
            .filter(|(k, _)| k != NAME_TAG)
            .cloned()
            .collect(),
    }
}

/// The processor architecture an instance type runs (`arm64` for AWS
/// Graviton: a family whose generation digit is followed by `g` — t4g,
/// m7g, c6gn, x2gd — and a1; `x86_64` for the rest).
pub(crate) fn type_architecture(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or_default();
    let generation = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let after = generation.trim_start_matches(|c: char| c.is_ascii_digit());
    let graviton = after.len() < generation.len() && after.starts_with('g');
    if family == "a1" || graviton {
        "arm64"
    } else {
        "x86_64"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::plan::{CloudAction, PlanOptions, plan, text};
    use crate::cloud::{Observed, Provider};

    const HOST: &str = "name: bastion\nprovider: ec2\nssh: {user: admin, sudo: true}\nserver:\n  type: TYPE\n  image: ami-0abcdef1234567890\n  subnet: subnet-0a1b2c3d\n  private_ip: 10.20.13.140\n  root_volume: {size_gb: 20}\n  termination_protection: true\n";

    fn fleet(instance_type: &str) -> crate::model::desired::Fleet {
        let mut t = crate::source::ConfigTree::default();
        t.insert_file(
            "tidekeeper.yaml",
            b"fleet: acme\ndefaults: {ssh: {from: [10.0.0.2/32]}}\nproviders: {ec2: {region: eu-central-1}}\n".to_vec(),
        );
        t.insert_file(
            "hosts/bastion.yaml",
            HOST.replace("TYPE", instance_type).into_bytes(),
        );
        crate::model::load(&t).expect("valid fleet")
    }

    fn observed(servers: Vec<ObservedServer>) -> Observed {
        let p = Ec2::from_env(&Settings {
            region: Some("eu-central-1".into()),
            credentials: crate::model::desired::AwsCredentials::Chain { profile: None },
            endpoint: None,
            timeout_secs: 1,
        })
        .unwrap();
        let prices = block(p.prices());
        Observed {
            servers,
            networks: vec![],
            prices: BTreeMap::from([(ProviderKind::Ec2, prices)]),
            ..Default::default()
        }
    }

    /// The table needs no network: resolve its future here.
    fn block(f: Fut<'_, PriceList>) -> PriceList {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
            .unwrap()
    }

    fn instance(instance_type: &str, protected: bool) -> ObservedServer {
        let mut labels = crate::cloud::desired::ownership("acme");
        labels.insert(crate::cloud::HOST_KEY.into(), "ab".into());
        ObservedServer {
            provider: ProviderKind::Ec2,
            id: "i-0123456789abcdef0".into(),
            name: "bastion".into(),
            size: instance_type.into(),
            image: Some("ami-0abcdef1234567890".into()),
            location: "eu-central-1".into(),
            labels,
            state: PowerState::Running,
            address: Some("10.20.13.140".into()),
            private_address: Some("10.20.13.140".into()),
            networks: vec![],
            firewall: None,
            static_ip: false,
            delete_protection: protected,
            subnet: None,
            volume_gb: Some(20),
            public_ipv4: true,
            egress: None,
        }
    }

    #[test]
    fn a_new_instance_is_planned_with_its_dated_price_and_the_spot_range() {
        let f = fleet("t3.small");
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &observed(vec![]),
            None,
            PlanOptions::default(),
        );
        assert_eq!(p.changes.len(), 1);
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Create);
        // 0.024 USD/h in eu-central-1 × 730 h, 20 GB gp3 at 0.0952 USD,
        // and a public IPv4 address at 0.005 USD/h × 730 h.
        assert!(
            (c.cost_after.unwrap().amount - (17.52 + 1.904 + 3.65)).abs() < 1e-9,
            "{:?}",
            c.cost_after
        );
        assert_eq!(p.cost["USD"].proposed, c.cost_after.unwrap().amount);
        let out = text(&p, false);
        assert!(
            out.contains(
                "EC2 on-demand, prices of 2026-12: 17.52 compute + 1.90 for 20 GB gp3 \
                 + 3.65 public IPv4 = 23.07 USD/month"
            ),
            "{out}"
        );
        assert!(
            out.contains("spot compute 5.26–8.76 USD/month, a typical range, never promised"),
            "{out}"
        );
        assert!(out.contains("private ip: 10.20.13.140"), "{out}");
        assert!(out.contains("root volume: 20 GB gp3"), "{out}");
        assert!(out.contains("termination protection: on"), "{out}");
    }

    /// One power job over an EC2 instance and a Lightsail one, both in
    /// USD: the EC2 saving is real and kept, the Lightsail server saves
    /// nothing (it bills stopped), and the report says both.
    #[test]
    fn a_power_job_over_ec2_and_lightsail_reports_the_ec2_saving() {
        let mut t = crate::source::ConfigTree::default();
        t.insert_file(
            "tidekeeper.yaml",
            b"fleet: acme\ndefaults: {ssh: {from: [10.0.0.2/32]}}\nproviders: {ec2: {region: eu-central-1}, lightsail: {region: eu-central-1}}\n".to_vec(),
        );
        t.insert_file(
            "hosts/bastion.yaml",
            HOST.replace("TYPE", "t3.small").into_bytes(),
        );
        t.insert_file(
            "hosts/web.yaml",
            b"provider: lightsail\nssh: {user: admin, sudo: true}\nserver: {bundle: small_3_0, blueprint: debian_12, zone: eu-central-1a}\n".to_vec(),
        );
        t.insert_file(
            "schedules.yaml",
            b"jobs:\n  - name: days\n    cron: \"0 8 * * *\"\n    hosts: {names: [bastion, web]}\n    power: {running_for: 12h}\n".to_vec(),
        );
        let f = crate::model::load(&t).expect("valid fleet");
        let mut obs = observed(vec![]);
        obs.prices.insert(
            ProviderKind::Lightsail,
            PriceList {
                currency: "USD",
                monthly: BTreeMap::from([(("small_3_0".into(), "*".into()), 10.0)]),
                bills_stopped: true,
                disk_gb: BTreeMap::new(),
                attached: BTreeMap::new(),
            },
        );
        let now = chrono::DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let out = crate::maintenance::power_saving(&f, &f.jobs[0], now, Some(&obs));
        assert!(
            out.contains("up 360 h in the next 30 days (50% of the time)"),
            "{out}"
        );
        // EC2: (17.52 compute + 3.65 address) × 0.5; its 1.90 of volume is
        // billed either way.
        assert!(
            out.contains("saving: 10.58 USD/month of 33.07 USD/month"),
            "{out}"
        );
        assert!(out.contains("5.00 if billed by running time"), "{out}");
    }

    #[test]
    fn a_new_type_is_a_resize_in_place_that_keeps_the_data() {
        let f = fleet("t3.medium");
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &observed(vec![instance("t3.small", true)]),
            None,
            PlanOptions::default(),
        );
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Resize);
        assert!(!c.new_server());
        assert!(
            c.reason
                .as_deref()
                .unwrap()
                .contains("its EBS volumes and data are kept"),
            "{:?}",
            c.reason
        );
        assert!(
            c.blocked.is_none(),
            "a resize in place needs no destroy permission: {:?}",
            c.blocked
        );
        // Its 20 GB volume and its public address, before and after.
        let attached = 1.904 + 3.65;
        assert!((c.cost_before.unwrap().amount - (17.52 + attached)).abs() < 1e-9);
        assert!((c.cost_after.unwrap().amount - (35.04 + attached)).abs() < 1e-9);
    }

    #[test]
    fn an_instance_without_a_public_address_pays_for_its_volume_only_beside_compute() {
        let f = fleet("t3.small");
        let mut private = instance("t3.small", true);
        private.public_ipv4 = false;
        private.volume_gb = Some(50);
        let obs = observed(vec![private.clone()]);
        let now = obs.server_price(&private).unwrap();
        assert!((now.monthly.amount - (17.52 + 50.0 * 0.0952)).abs() < 1e-9);
        assert!(
            (now.while_stopped - 50.0 * 0.0952).abs() < 1e-9,
            "a stopped instance pays for its volume only"
        );
        // The config's 20 GB does not shrink the volume tidekeeper does not
        // resize: still 50 GB once applied (a pull request cannot make room
        // under a budget by writing a smaller size), and still no public
        // address, as it has none now.
        let d = &crate::cloud::desired::servers(&f)[0];
        let after = obs.desired_price(d).unwrap();
        assert!((after.monthly.amount - now.monthly.amount).abs() < 1e-9);
    }

    #[test]
    fn a_protected_instance_whose_host_left_is_blocked_even_with_allow_destroy() {
        let mut f = fleet("t3.small");
        f.hosts.clear();
        let opts = PlanOptions {
            allow_destroy: true,
        };
        let p = plan(
            &f,
            &[],
            &observed(vec![instance("t3.small", true)]),
            None,
            opts,
        );
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Delete);
        let b = c.blocked.as_deref().expect("blocked");
        assert!(
            b.contains("termination protection is on for instance i-0123456789abcdef0"),
            "{b}"
        );
        let p = plan(
            &f,
            &[],
            &observed(vec![instance("t3.small", false)]),
            None,
            opts,
        );
        assert!(p.changes[0].blocked.is_none(), "{:?}", p.changes[0].blocked);
    }

    #[test]
    fn turning_protection_off_is_an_update() {
        let f = fleet("t3.small");
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &observed(vec![instance("t3.small", false)]),
            None,
            PlanOptions::default(),
        );
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Update);
        assert_eq!(c.attrs[0].name, "termination protection");
    }

    const FILTER: &str = "136693071363/debian-12-amd64-*";

    #[test]
    fn graviton_types_run_arm64_and_the_rest_x86_64() {
        for t in [
            "t4g.small",
            "m7g.large",
            "c6gn.xlarge",
            "x2gd.medium",
            "im4gn.large",
            "g5g.xlarge",
            "a1.large",
        ] {
            assert_eq!(type_architecture(t), "arm64", "{t}");
        }
        for t in [
            "t3.small",
            "m6i.large",
            "g5.xlarge",
            "inf2.xlarge",
            "m7a.medium",
            "c7i.large",
            "t2.micro",
        ] {
            assert_eq!(type_architecture(t), "x86_64", "{t}");
        }
    }

    #[test]
    fn an_image_for_the_other_architecture_is_a_plan_error_naming_both() {
        let images = |f: &str, id: &str, name: &str| {
            crate::cloud::Images::from([(f.to_string(), image(id, name, "136693071363"))])
        };
        // An x86 type with the amd64 filter the fleet names: planned.
        let p = plan_filtered(
            vec![],
            images(FILTER, "ami-1", "debian-12-amd64-20261201-1"),
        );
        assert!(
            p.errors.is_empty() && p.changes.len() == 1,
            "{:?}",
            p.errors
        );
        // The same filter answered by an arm64 image (a wrong pattern): refused.
        let p = plan_filtered(
            vec![],
            images(FILTER, "ami-2", "debian-12-arm64-20261201-1"),
        );
        let why = p.blocked().join("\n");
        assert!(
            why.contains("bastion: a t3.small runs x86_64 programs, but image debian-12-arm64-20261201-1 (ami-2) is built for arm64"),
            "{why}"
        );
        assert!(why.contains("debian-12-amd64-*"), "{why}");
    }

    fn image(id: &str, name: &str, owner: &str) -> Option<crate::cloud::ImageInfo> {
        Some(crate::cloud::ImageInfo {
            id: id.into(),
            name: name.into(),
            owner: owner.into(),
            created: "2026-12-01T10:00:00.000Z".into(),
            architecture: if name.contains("arm64") {
                "arm64"
            } else {
                "x86_64"
            }
            .into(),
        })
    }

    /// The fleet with its AMI chosen by filter, planned against `seen`
    /// instances and `images` looked up.
    fn plan_filtered(
        seen: Vec<ObservedServer>,
        images: crate::cloud::Images,
    ) -> crate::cloud::plan::CloudPlan {
        let mut t = crate::source::ConfigTree::default();
        t.insert_file(
            "tidekeeper.yaml",
            b"fleet: acme\ndefaults: {ssh: {from: [10.0.0.2/32]}}\nproviders: {ec2: {region: eu-central-1}}\n".to_vec(),
        );
        let host = HOST
            .replace("TYPE", "t3.small")
            .replace("ami-0abcdef1234567890", &format!("\"{FILTER}\""));
        t.insert_file("hosts/bastion.yaml", host.into_bytes());
        let f = crate::model::load(&t).expect("valid fleet");
        assert_eq!(
            crate::cloud::Clouds::from_env(&f).image_filters,
            vec![FILTER.to_string()],
            "observing looks the filter up"
        );
        let mut o = observed(seen);
        o.images = images;
        plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &o,
            None,
            PlanOptions::default(),
        )
    }

    #[test]
    fn an_image_filter_launches_the_image_it_chose_and_the_plan_shows_which() {
        let chosen = image("ami-0new", "debian-12-amd64-20261201-1", "136693071363");
        let p = plan_filtered(vec![], BTreeMap::from([(FILTER.into(), chosen)]));
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Create);
        assert_eq!(c.desired.as_ref().unwrap().image, "ami-0new", "pinned");
        let out = text(&p, false);
        assert!(
            out.contains(&format!(
                "image: debian-12-amd64-20261201-1 (ami-0new, {FILTER})"
            )),
            "{out}"
        );
        assert!(p.errors.is_empty() && p.warnings.is_empty(), "{p:?}");
    }

    #[test]
    fn an_instance_of_an_older_image_of_its_filter_is_kept_and_of_another_is_replaced() {
        let mut older = instance("t3.small", true);
        older.image = Some("ami-0old".into());
        let images = BTreeMap::from([
            (
                FILTER.into(),
                image("ami-0new", "debian-12-amd64-20261201-1", "136693071363"),
            ),
            (
                "ami-0old".into(),
                image("ami-0old", "debian-12-amd64-20261101-1", "136693071363"),
            ),
            (
                "ami-0ubu".into(),
                image("ami-0ubu", "debian-12-amd64-x", "099720109477"),
            ),
        ]);
        let kept = |p: &crate::cloud::plan::CloudPlan| {
            p.changes.iter().all(|c| {
                c.action != CloudAction::Replace && c.attrs.iter().all(|a| a.name != "image")
            })
        };
        let p = plan_filtered(vec![older.clone()], images.clone());
        assert!(kept(&p), "a newer image is no reason to replace: {p:?}");
        // An image the filter does not cover (another owner): replaced, by the chosen one.
        let mut other = older.clone();
        other.image = Some("ami-0ubu".into());
        let p = plan_filtered(vec![other], images.clone());
        let c = &p.changes[0];
        assert_eq!(c.action, CloudAction::Replace, "{p:?}");
        assert_eq!(c.desired.as_ref().unwrap().image, "ami-0new");
        // An image that can no longer be described is not judged.
        let mut gone = older;
        gone.image = Some("ami-0gone".into());
        assert!(kept(&plan_filtered(vec![gone], images)));
    }

    #[test]
    fn a_filter_that_matches_nothing_stops_the_plan_and_one_not_looked_up_is_a_warning() {
        let p = plan_filtered(vec![], BTreeMap::from([(FILTER.into(), None)]));
        assert!(p.changes.is_empty());
        let e = p.errors.join("\n");
        assert!(
            e.contains("bastion: no available AMI of account 136693071363 is named like \"debian-12-amd64-*\"")
                && e.contains("aws ec2 describe-images --owners 136693071363"),
            "{e}"
        );
        // A proposal's new filter: the daemon looked up only the base's.
        let p = plan_filtered(vec![], BTreeMap::new());
        assert_eq!(p.changes[0].action, CloudAction::Create);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert!(
            p.warnings
                .join("\n")
                .contains("is chosen when this is planned on the base branch"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn image_filters_name_an_owner_and_match_with_ec2_wildcards() {
        use crate::model::desired::{ami_filter, ami_name_matches};
        assert_eq!(
            ami_filter(FILTER),
            Some(("136693071363", "debian-12-amd64-*"))
        );
        assert_eq!(
            ami_filter("099720109477/ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"),
            Some((
                "099720109477",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
            ))
        );
        assert_eq!(
            ami_filter("amazon/al2023-ami-*"),
            Some(("amazon", "al2023-ami-*"))
        );
        for bad in [
            "ami-0abc",
            "debian-12",
            "1234/debian-*",
            "136693071363/",
            "someone/x",
        ] {
            assert_eq!(ami_filter(bad), None, "{bad}");
        }
        assert!(ami_name_matches(
            "debian-12-amd64-*",
            "debian-12-amd64-20261201-1"
        ));
        assert!(!ami_name_matches(
            "debian-12-amd64-*",
            "debian-12-arm64-20261201-1"
        ));
        assert!(ami_name_matches(
            "debian-1?-*-2026*",
            "debian-12-arm64-20261201-1"
        ));
        assert!(!ami_name_matches("debian-12", "debian-12-amd64"));
        assert!(ami_name_matches("*", ""));
        assert!(ami_name_matches("*-12-*-1", "debian-12-amd64-20261201-1"));
        assert!(!ami_name_matches("?", ""));
        // A pattern that backtracks exponentially in a naive matcher.
        let hostile = format!("{}b", "*a".repeat(40));
        assert!(!ami_name_matches(&hostile, &"a".repeat(200)));
        assert!(ami_name_matches(&hostile, &format!("{}b", "a".repeat(200))));
    }

    #[test]
    fn firewall_rules_round_trip_through_security_group_rules() {
        let want = vec![
            CloudPort {
                from_port: 22,
                to_port: 22,
                proto: "tcp".into(),
                from: vec!["203.0.113.0/24".into()],
            },
            CloudPort {
                from_port: 53,
                to_port: 53,
                proto: "any".into(),
                from: vec!["10.0.0.0/8".into(), "::/0".into()],
            },
        ];
        let r = rules(&want);
        assert_eq!(r.len(), 3, "any is a tcp and a udp rule: {r:?}");
        assert!(r.iter().all(|x| x.protocol != "-1"));
        assert_eq!(ports(&r), want);
    }

    /// A fleet with VPC network `lab` (NAT as given, in `region`) and one
    /// host in its public subnet.
    fn vpc_fleet(region: &str, nat: bool) -> crate::model::desired::Fleet {
        let mut t = crate::source::ConfigTree::default();
        let providers = if region.is_empty() {
            "{ec2: {}}".to_string()
        } else {
            format!("{{ec2: {{region: {region}}}}}")
        };
        t.insert_file(
            "tidekeeper.yaml",
            format!("fleet: acme\ndefaults: {{ssh: {{from: [10.0.0.2/32]}}}}\nproviders: {providers}\nnetworks:\n  lab: {{provider: ec2, ip_range: 10.40.0.0/16, subnets: [10.40.13.0/24], public_subnets: [10.40.0.0/24], nat: {nat}}}\n").into_bytes(),
        );
        t.insert_file(
            "hosts/gate.yaml",
            b"provider: ec2\nssh: {user: admin, sudo: true, address: private}\nserver: {type: t3.small, image: ami-0abcdef1234567890, networks: [lab]}\n".to_vec(),
        );
        crate::model::load(&t).expect("valid fleet")
    }

    fn observed_network(nat: bool) -> super::super::ObservedNetwork {
        super::super::ObservedNetwork {
            provider: ProviderKind::Ec2,
            id: "vpc-1".into(),
            name: "lab".into(),
            ip_range: "10.40.0.0/16".into(),
            subnets: vec!["10.40.13.0/24".into()],
            public_subnets: vec!["10.40.0.0/24".into()],
            nat,
            region: "eu-central-1".into(),
            labels: crate::cloud::desired::ownership("acme"),
            delete_protection: false,
        }
    }

    #[test]
    fn a_nat_gateway_is_priced_by_the_hour_with_its_address_and_counted_in_the_total() {
        let f = vpc_fleet("eu-central-1", true);
        let obs = observed(vec![]);
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &obs,
            None,
            PlanOptions::default(),
        );
        let n = &p.networks[0];
        assert_eq!(n.action, CloudAction::Create);
        let nat = 0.052 * 730.0 + 0.005 * 730.0;
        assert!((n.cost_after.unwrap().amount - nat).abs() < 1e-9, "{n:?}");
        assert!(
            text(&p, false).contains("+ lab network (EC2)  +41.61 USD/month"),
            "{}",
            text(&p, false)
        );
        // The gate (in the first, private, subnet here) has no public address.
        let gate = 0.0240 * 730.0 + 8.0 * 0.0952;
        let usd = p.cost["USD"];
        assert!((usd.proposed - (nat + gate)).abs() < 1e-6, "{usd:?}");
        assert_eq!(usd.prior, 0.0);

        // The network exists with its gateway; the config drops it.
        let f = vpc_fleet("eu-central-1", false);
        let mut obs = observed(vec![]);
        obs.networks = vec![observed_network(true)];
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &obs,
            None,
            PlanOptions::default(),
        );
        let n = &p.networks[0];
        assert_eq!(n.action, CloudAction::Update);
        assert!((n.cost_before.unwrap().amount - nat).abs() < 1e-9);
        assert_eq!(n.cost_after, None);
        let usd = p.cost["USD"];
        assert!(
            (usd.prior - nat).abs() < 1e-6 && (usd.proposed - gate).abs() < 1e-6,
            "{usd:?}"
        );

        // As the config asks: no change, nothing counted twice.
        let f = vpc_fleet("eu-central-1", true);
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &obs,
            None,
            PlanOptions::default(),
        );
        assert!(p.networks.is_empty(), "{:?}", p.networks);
        let usd = p.cost["USD"];
        assert!(
            (usd.prior - nat).abs() < 1e-6 && (usd.proposed - usd.prior - gate).abs() < 1e-6,
            "{usd:?}"
        );

        // A region the table lacks: the gateway's cost is unknown, not free.
        let f = vpc_fleet("", true);
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &observed(vec![]),
            None,
            PlanOptions::default(),
        );
        assert!(
            text(&p, false).contains("+ lab network (EC2)  cost unknown"),
            "{}",
            text(&p, false)
        );
    }

    #[test]
    fn a_host_placed_by_subnet_id_in_a_networks_subnet_is_where_it_should_be() {
        let f = fleet("t3.small");
        let mut i = instance("t3.small", true);
        i.subnet = Some("subnet-0a1b2c3d".into());
        // Another fleet's network holds that subnet.
        i.networks = vec![("lab".into(), "10.20.13.140".into())];
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &observed(vec![i.clone()]),
            None,
            PlanOptions::default(),
        );
        assert!(
            !p.changes.iter().any(|c| c.action == CloudAction::Replace
                || c.attrs.iter().any(|a| a.name == "networks")),
            "{:?}",
            p.changes
        );
        // Another subnet or address is a new instance.
        i.subnet = Some("subnet-other".into());
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &observed(vec![i]),
            None,
            PlanOptions::default(),
        );
        assert_eq!(p.changes[0].action, CloudAction::Replace, "{:?}", p.changes);
    }

    #[test]
    fn a_network_a_server_stays_in_is_not_deleted_and_another_fleets_is_not_ours() {
        // The network left the config; its server's deletion is refused.
        let f = fleet("t3.small");
        let mut obs = observed(vec![]);
        let mut gone = instance("t3.small", true);
        gone.name = "db".into();
        gone.networks = vec![("lab".into(), "10.40.13.9".into())];
        obs.servers = vec![gone];
        obs.networks = vec![observed_network(false)];
        let opts = PlanOptions {
            allow_destroy: true,
        };
        let p = plan(&f, &crate::cloud::desired::servers(&f), &obs, None, opts);
        let n = p
            .networks
            .iter()
            .find(|n| n.name == "lab")
            .expect("its delete");
        assert_eq!(n.action, CloudAction::Delete);
        assert!(
            n.blocked
                .as_deref()
                .is_some_and(|b| b.contains("server db is still in it")),
            "{n:?}"
        );

        // Another fleet's VPC of the same name: ours is made beside it.
        let f = vpc_fleet("eu-central-1", false);
        let mut theirs = observed_network(false);
        theirs.labels = crate::cloud::desired::ownership("other");
        let mut obs = observed(vec![]);
        obs.networks = vec![theirs];
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &obs,
            None,
            PlanOptions::default(),
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.networks[0].action, CloudAction::Create);
    }

    #[test]
    fn a_subnet_does_not_change_kind_and_allow_destroy_reaches_the_vpc() {
        let f = vpc_fleet("eu-central-1", false);
        let mut have = observed_network(false);
        have.subnets = vec![];
        have.public_subnets = vec!["10.40.13.0/24".into(), "10.40.0.0/24".into()];
        let mut obs = observed(vec![]);
        obs.networks = vec![have];
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &obs,
            None,
            PlanOptions::default(),
        );
        assert!(
            p.errors
                .iter()
                .any(|e| e
                    .contains("subnet 10.40.13.0/24 is public in EC2 and private in the config")),
            "{:?}",
            p.errors
        );

        let mut have = observed_network(false);
        have.labels
            .insert(crate::cloud::ALLOW_DESTROY.into(), "true".into());
        obs.networks = vec![have];
        let p = plan(
            &f,
            &crate::cloud::desired::servers(&f),
            &obs,
            None,
            PlanOptions::default(),
        );
        let n = &p.networks[0];
        assert_eq!(n.action, CloudAction::Update);
        assert!(n.attrs.iter().any(|a| a.name == "allow destroy"), "{n:?}");
    }

    #[test]
    fn a_declared_network_no_host_names_keeps_costing_what_it_costs() {
        let mut f = vpc_fleet("eu-central-1", true);
        for h in &mut f.hosts {
            if let Some(s) = h.server.as_mut() {
                s.networks.clear();
            }
        }
        let mut obs = observed(vec![]);
        obs.networks = vec![observed_network(true)];
        let p = plan(&f, &[], &obs, None, PlanOptions::default());
        assert!(p.networks.is_empty(), "{:?}", p.networks);
        let usd = p.cost["USD"];
        assert!(
            (usd.prior - usd.proposed).abs() < 1e-9 && usd.prior > 40.0,
            "{usd:?}"
        );
    }
}
