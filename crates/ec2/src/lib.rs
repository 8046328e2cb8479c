//! The Amazon EC2 calls tidekeeper makes, with plain types in and out.
//!
//! The real `aws-sdk-ec2` client does the work: SigV4 signing, the EC2
//! Query protocol (form-encoded requests, XML answers), and retries
//! (standard mode). Credentials are a key pair the caller read from the
//! environment, or the SDK's default chain, as for Lightsail; they are
//! never logged.

use aws_sdk_ec2::types;

use tidekeeper_aws::error as err;
pub use tidekeeper_aws::{Auth, Error, Settings};

/// One ingress rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// `tcp`, `udp`, `icmp` or `-1` (all).
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub cidrs: Vec<String>,
    pub ipv6_cidrs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub vpc: String,
    pub ingress: Vec<Rule>,
    /// Outbound rules, destinations in `cidrs`: a new group allows all.
    pub egress: Vec<Rule>,
    /// What ingress admits besides address ranges: other groups' ids and
    /// prefix lists (`server.firewall` cannot say these).
    pub other_sources: Vec<String>,
    pub tags: Vec<(String, String)>,
}

/// An AMI: which image, whose, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// The owning account's id.
    pub owner: String,
    /// `creationDate`, ISO 8601.
    pub created: String,
    /// `x86_64`, `arm64`, … (empty where EC2 did not say).
    pub architecture: String,
}

impl Image {
    fn from_sdk(i: &types::Image) -> Option<Image> {
        Some(Image {
            id: i.image_id()?.to_string(),
            name: i.name().unwrap_or_default().to_string(),
            owner: i.owner_id().unwrap_or_default().to_string(),
            created: i.creation_date().unwrap_or_default().to_string(),
            architecture: i
                .architecture()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub image: String,
    pub zone: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    pub subnet: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub tags: Vec<(String, String)>,
    pub security_groups: Vec<String>,
    /// The root EBS volume's id.
    pub root_volume: Option<String>,
    /// IMDSv2 required (`HttpTokens=required`).
    pub imds_v2: bool,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Volume {
    pub id: String,
    pub size_gb: i32,
    /// `gp3`, `gp2`, `io2`, …
    pub volume_type: String,
}

/// A VPC: a private network of its own address range.
#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    /// Its primary IPv4 range.
    pub cidr: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc: String,
    pub cidr: String,
    pub zone: String,
    /// Instances launched here get a public address (a public subnet).
    pub map_public_ip: bool,
    pub tags: Vec<(String, String)>,
}

/// An internet gateway: a VPC's way to the internet once attached and
/// routed to.
#[derive(Debug, Clone)]
pub struct InternetGateway {
    pub id: String,
    /// VPCs it is attached to
    pub vpcs: Vec<String>,
    pub tags: Vec<(String, String)>,
}

/// Where a route sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// `local`, or an internet gateway's id
    Gateway(String),
    NatGateway(String),
}

/// One IPv4 route of a route table.
#[derive(Debug, Clone)]
pub struct Route {
    pub destination: String,
    pub target: RouteTarget,
}

/// A route table: where a VPC's subnets send traffic.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub id: String,
    pub vpc: String,
    /// The VPC's main table: subnets without a table of their own use it.
    pub main: bool,
    /// IPv4 routes to gateways and NAT gateways; routes to other targets
    /// (peering, transit gateways, interfaces) and to prefix lists are left
    /// out.
    pub routes: Vec<Route>,
    /// (association id, subnet id) of its explicit subnet associations
    pub subnets: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

/// A NAT gateway: a private subnet's way out, from a public subnet.
#[derive(Debug, Clone)]
pub struct NatGateway {
    pub id: String,
    pub vpc: String,
    pub subnet: String,
    /// pending | available | deleting | deleted | failed
    pub state: String,
    /// Its Elastic IP's allocation id, and the address.
    pub allocation: Option<String>,
    pub public_ip: Option<String>,
    /// EC2's failure message when state is failed
    pub failure: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// An Elastic IP address: a public address kept across instances.
#[derive(Debug, Clone)]
pub struct Address {
    pub allocation: String,
    pub public_ip: String,
    /// The association's id while in use (by an instance or a NAT gateway).
    pub association: Option<String>,
    pub instance: Option<String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub volume: String,
    /// `pending`, `completed`, `error`.
    pub state: String,
    /// Milliseconds since the epoch.
    pub started_ms: i64,
    pub tags: Vec<(String, String)>,
}

/// What a new instance is made of.
pub struct Launch<'a> {
    pub instance_type: &'a str,
    pub image: &'a str,
    pub subnet: Option<&'a str>,
    pub private_ip: Option<&'a str>,
    pub key_name: Option<&'a str>,
    /// Plain text; encoded here.
    pub user_data: &'a str,
    pub security_groups: &'a [String],
    /// The root volume's device (the AMI's), size and type.
    pub root_device: &'a str,
    pub root_gb: Option<i32>,
    pub root_type: Option<&'a str>,
    pub termination_protection: bool,
    pub tags: &'a [(String, String)],
}

#[derive(Clone)]
pub struct Client {
    inner: aws_sdk_ec2::Client,
}

fn tags(list: &[types::Tag]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn tag_list(list: &[(String, String)]) -> Vec<types::Tag> {
    list.iter()
        .map(|(k, v)| types::Tag::builder().key(k).value(v).build())
        .collect()
}

fn tag_spec(kind: types::ResourceType, list: &[(String, String)]) -> types::TagSpecification {
    types::TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tag_list(list)))
        .build()
}

fn instance(i: &types::Instance) -> Instance {
    let root = i.root_device_name();
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        image: i.image_id().unwrap_or_default().to_string(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        subnet: i.subnet_id().map(String::from),
        public_ip: i.public_ip_address().map(String::from),
        private_ip: i.private_ip_address().map(String::from),
        tags: tags(i.tags()),
        security_groups: i
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(String::from))
            .collect(),
        root_volume: i
            .block_device_mappings()
            .iter()
            .find(|b| root.is_none() || b.device_name() == root)
            .and_then(|b| b.ebs()?.volume_id().map(String::from)),
        imds_v2: i
            .metadata_options()
            .and_then(|m| m.http_tokens())
            .is_some_and(|t| *t == types::HttpTokensState::Required),
    }
}

fn subnet(s: &types::Subnet) -> Subnet {
    Subnet {
        id: s.subnet_id().unwrap_or_default().to_string(),
        vpc: s.vpc_id().unwrap_or_default().to_string(),
        cidr: s.cidr_block().unwrap_or_default().to_string(),
        zone: s.availability_zone().unwrap_or_default().to_string(),
        map_public_ip: s.map_public_ip_on_launch().unwrap_or(false),
        tags: tags(s.tags()),
    }
}

/// A route as [`Route`] has it; None for targets and destinations it
/// cannot say.
fn route(r: &types::Route) -> Option<Route> {
    let target = match (r.gateway_id(), r.nat_gateway_id()) {
        (Some(g), _) => RouteTarget::Gateway(g.to_string()),
        (None, Some(n)) => RouteTarget::NatGateway(n.to_string()),
        (None, None) => return None,
    };
    Some(Route {
        destination: r.destination_cidr_block()?.to_string(),
        target,
    })
}

fn route_table(t: &types::RouteTable) -> RouteTable {
    let associations = t.associations();
    RouteTable {
        id: t.route_table_id().unwrap_or_default().to_string(),
        vpc: t.vpc_id().unwrap_or_default().to_string(),
        main: associations.iter().any(|a| a.main() == Some(true)),
        routes: t.routes().iter().filter_map(route).collect(),
        subnets: associations
            .iter()
            .filter_map(|a| {
                Some((
                    a.route_table_association_id()?.to_string(),
                    a.subnet_id()?.to_string(),
                ))
            })
            .collect(),
        tags: tags(t.tags()),
    }
}

fn nat_gateway(n: &types::NatGateway) -> NatGateway {
    let address = n.nat_gateway_addresses().first();
    NatGateway {
        id: n.nat_gateway_id().unwrap_or_default().to_string(),
        vpc: n.vpc_id().unwrap_or_default().to_string(),
        subnet: n.subnet_id().unwrap_or_default().to_string(),
        state: n
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        allocation: address.and_then(|a| a.allocation_id().map(String::from)),
        public_ip: address.and_then(|a| a.public_ip().map(String::from)),
        failure: n.failure_message().map(String::from),
        tags: tags(n.tags()),
    }
}

fn address(a: &types::Address) -> Address {
    Address {
        allocation: a.allocation_id().unwrap_or_default().to_string(),
        public_ip: a.public_ip().unwrap_or_default().to_string(),
        association: a.association_id().map(String::from),
        instance: a.instance_id().map(String::from),
        tags: tags(a.tags()),
    }
}

fn rule(p: &types::IpPermission) -> Rule {
    Rule {
        protocol: p.ip_protocol().unwrap_or("-1").to_string(),
        from: p.from_port().unwrap_or(-1),
        to: p.to_port().unwrap_or(-1),
        cidrs: p
            .ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip().map(String::from))
            .collect(),
        ipv6_cidrs: p
            .ipv6_ranges()
            .iter()
            .filter_map(|r| r.cidr_ipv6().map(String::from))
            .collect(),
    }
}

fn permission(r: &Rule) -> types::IpPermission {
    types::IpPermission::builder()
        .ip_protocol(&r.protocol)
        .from_port(r.from)
        .to_port(r.to)
        .set_ip_ranges(Some(
            r.cidrs
                .iter()
                .map(|c| types::IpRange::builder().cidr_ip(c).build())
                .collect(),
        ))
        .set_ipv6_ranges(Some(
            r.ipv6_cidrs
                .iter()
                .map(|c| types::Ipv6Range::builder().cidr_ipv6(c).build())
                .collect(),
        ))
        .build()
}

impl Client {
    /// A client; with [`Auth::Chain`] the profile files are read now and
    /// the credentials fetched on the first call.
    pub async fn new(s: Settings) -> Result<Client, Error> {
        let shared = tidekeeper_aws::config(s, "ec2").await?;
        Ok(Client {
            inner: aws_sdk_ec2::Client::new(&shared),
        })
    }

    /// Every instance in the region but terminated ones (all pages).
    pub async fn instances(&self) -> Result<Vec<Instance>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .describe_instances()
                .set_next_token(token.take())
                .send()
                .await
                .map_err(err)?;
            for r in page.reservations() {
                out.extend(
                    r.instances()
                        .iter()
                        .map(instance)
                        .filter(|i| i.state != "terminated"),
                );
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn instance(&self, id: &str) -> Result<Option<Instance>, Error> {
        match self
            .inner
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(r) => Ok(r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(instance)
                .next()),
            Err(e) => {
                let e = err(e);
                if e.not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Start an instance; its id (it is `pending` until it runs).
    pub async fn run(&self, l: &Launch<'_>) -> Result<String, Error> {
        let mut ebs = types::EbsBlockDevice::builder()
            .delete_on_termination(true)
            .set_volume_size(l.root_gb);
        if let Some(t) = l.root_type {
            ebs = ebs.volume_type(types::VolumeType::from(t));
        }
        let r = self
            .inner
            .run_instances()
            .image_id(l.image)
            .instance_type(types::InstanceType::from(l.instance_type))
            .min_count(1)
            .max_count(1)
            .set_subnet_id(l.subnet.map(String::from))
            .set_private_ip_address(l.private_ip.map(String::from))
            .set_key_name(l.key_name.map(String::from))
            .user_data(aws_smithy_types::base64::encode(l.user_data))
            .set_security_group_ids(Some(l.security_groups.to_vec()))
            .metadata_options(
                types::InstanceMetadataOptionsRequest::builder()
                    .http_tokens(types::HttpTokensState::Required)
                    .http_endpoint(types::InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .block_device_mappings(
                types::BlockDeviceMapping::builder()
                    .device_name(l.root_device)
                    .ebs(ebs.build())
                    .build(),
            )
            .disable_api_termination(l.termination_protection)
            .tag_specifications(tag_spec(types::ResourceType::Instance, l.tags))
            .tag_specifications(tag_spec(types::ResourceType::Volume, l.tags))
            .send()
            .await
            .map_err(err)?;
        r.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(String::from)
            .ok_or_else(|| Error {
                code: String::new(),
                message: "RunInstances answered without an instance".into(),
            })
    }

    pub async fn stop(&self, id: &str) -> Result<(), Error> {
        self.inner
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn start(&self, id: &str) -> Result<(), Error> {
        self.inner
            .start_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn terminate(&self, id: &str) -> Result<(), Error> {
        self.inner
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// A new instance type; EC2 takes it only while the instance is stopped.
    pub async fn set_type(&self, id: &str, instance_type: &str) -> Result<(), Error> {
        self.inner
            .modify_instance_attribute()
            .instance_id(id)
            .instance_type(
                types::AttributeValue::builder()
                    .value(instance_type)
                    .build(),
            )
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn set_termination_protection(&self, id: &str, on: bool) -> Result<(), Error> {
        self.inner
            .modify_instance_attribute()
            .instance_id(id)
            .disable_api_termination(types::AttributeBooleanValue::builder().value(on).build())
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn termination_protection(&self, id: &str) -> Result<bool, Error> {
        let r = self
            .inner
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(types::InstanceAttributeName::DisableApiTermination)
            .send()
            .await
            .map_err(err)?;
        Ok(r.disable_api_termination()
            .and_then(|v| v.value())
            .unwrap_or(false))
    }

    pub async fn tag(&self, resource: &str, tags: &[(String, String)]) -> Result<(), Error> {
        self.inner
            .create_tags()
            .resources(resource)
            .set_tags(Some(tag_list(tags)))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn untag(&self, resource: &str, keys: &[String]) -> Result<(), Error> {
        self.inner
            .delete_tags()
            .resources(resource)
            .set_tags(Some(
                keys.iter()
                    .map(|k| types::Tag::builder().key(k).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn volumes(&self, ids: &[String]) -> Result<Vec<Volume>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let r = self
            .inner
            .describe_volumes()
            .set_volume_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(err)?;
        Ok(r.volumes()
            .iter()
            .map(|v| Volume {
                id: v.volume_id().unwrap_or_default().to_string(),
                size_gb: v.size().unwrap_or_default(),
                volume_type: v
                    .volume_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// The region's subnets, with whether each maps public IPs on launch.
    pub async fn subnets(&self) -> Result<Vec<Subnet>, Error> {
        let r = self.inner.describe_subnets().send().await.map_err(err)?;
        Ok(r.subnets().iter().map(subnet).collect())
    }

    /// The region's VPCs (all pages).
    pub async fn vpcs(&self) -> Result<Vec<Vpc>, Error> {
        let all = self
            .inner
            .describe_vpcs()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(err)?;
        Ok(all
            .iter()
            .map(|v| Vpc {
                id: v.vpc_id().unwrap_or_default().to_string(),
                cidr: v.cidr_block().unwrap_or_default().to_string(),
                tags: tags(v.tags()),
            })
            .collect())
    }

    /// A new VPC of range `cidr` (`/16` to `/28`); its id. EC2 gives it a
    /// main route table and a default security group.
    pub async fn create_vpc(&self, cidr: &str, tags: &[(String, String)]) -> Result<String, Error> {
        let r = self
            .inner
            .create_vpc()
            .cidr_block(cidr)
            .tag_specifications(tag_spec(types::ResourceType::Vpc, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.vpc()
            .and_then(|v| v.vpc_id())
            .unwrap_or_default()
            .to_string())
    }

    /// Delete a VPC; EC2 refuses (`DependencyViolation`) while it has
    /// subnets, an attached gateway, route tables or groups of its own.
    pub async fn delete_vpc(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_vpc()
            .vpc_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// A new subnet of `vpc` (a range inside the VPC's, overlapping none of
    /// its other subnets), in `zone` or one EC2 picks; its id.
    pub async fn create_subnet(
        &self,
        vpc: &str,
        cidr: &str,
        zone: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let r = self
            .inner
            .create_subnet()
            .vpc_id(vpc)
            .cidr_block(cidr)
            .set_availability_zone(zone.map(String::from))
            .tag_specifications(tag_spec(types::ResourceType::Subnet, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.subnet()
            .and_then(|s| s.subnet_id())
            .unwrap_or_default()
            .to_string())
    }

    /// Whether instances launched in `subnet` get a public address
    /// (`MapPublicIpOnLaunch`): what makes a subnet public, with a route to
    /// an internet gateway.
    pub async fn set_map_public_ip(&self, subnet: &str, on: bool) -> Result<(), Error> {
        self.inner
            .modify_subnet_attribute()
            .subnet_id(subnet)
            .map_public_ip_on_launch(types::AttributeBooleanValue::builder().value(on).build())
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Delete a subnet; refused while instances or NAT gateways are in it.
    pub async fn delete_subnet(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_subnet()
            .subnet_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The region's internet gateways (all pages).
    pub async fn internet_gateways(&self) -> Result<Vec<InternetGateway>, Error> {
        let all = self
            .inner
            .describe_internet_gateways()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(err)?;
        Ok(all
            .iter()
            .map(|g| InternetGateway {
                id: g.internet_gateway_id().unwrap_or_default().to_string(),
                vpcs: g
                    .attachments()
                    .iter()
                    .filter_map(|a| a.vpc_id().map(String::from))
                    .collect(),
                tags: tags(g.tags()),
            })
            .collect())
    }

    /// A new, detached internet gateway; its id.
    pub async fn create_internet_gateway(
        &self,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let r = self
            .inner
            .create_internet_gateway()
            .tag_specifications(tag_spec(types::ResourceType::InternetGateway, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.internet_gateway()
            .and_then(|g| g.internet_gateway_id())
            .unwrap_or_default()
            .to_string())
    }

    /// Attach a gateway to `vpc` (one each way); refused
    /// (`Resource.AlreadyAssociated`) where either has one already.
    pub async fn attach_internet_gateway(&self, gateway: &str, vpc: &str) -> Result<(), Error> {
        self.inner
            .attach_internet_gateway()
            .internet_gateway_id(gateway)
            .vpc_id(vpc)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Detach a gateway from `vpc`; refused while public addresses in the
    /// VPC (instances', NAT gateways') depend on it.
    pub async fn detach_internet_gateway(&self, gateway: &str, vpc: &str) -> Result<(), Error> {
        self.inner
            .detach_internet_gateway()
            .internet_gateway_id(gateway)
            .vpc_id(vpc)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Delete an internet gateway; refused while it is attached.
    pub async fn delete_internet_gateway(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_internet_gateway()
            .internet_gateway_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The region's route tables (all pages), main ones included.
    pub async fn route_tables(&self) -> Result<Vec<RouteTable>, Error> {
        let all = self
            .inner
            .describe_route_tables()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(err)?;
        Ok(all.iter().map(route_table).collect())
    }

    /// A new route table in `vpc`, with only the `local` route; its id.
    pub async fn create_route_table(
        &self,
        vpc: &str,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let r = self
            .inner
            .create_route_table()
            .vpc_id(vpc)
            .tag_specifications(tag_spec(types::ResourceType::RouteTable, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.route_table()
            .and_then(|t| t.route_table_id())
            .unwrap_or_default()
            .to_string())
    }

    /// Delete a route table; refused while subnets are associated with it,
    /// and for a VPC's main table.
    pub async fn delete_route_table(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_route_table()
            .route_table_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// A new route to `target`; refused (`RouteAlreadyExists`) where the
    /// table has one for `destination` already.
    pub async fn create_route(
        &self,
        table: &str,
        destination: &str,
        target: &RouteTarget,
    ) -> Result<(), Error> {
        let mut call = self
            .inner
            .create_route()
            .route_table_id(table)
            .destination_cidr_block(destination);
        call = match target {
            RouteTarget::Gateway(g) => call.gateway_id(g),
            RouteTarget::NatGateway(n) => call.nat_gateway_id(n),
        };
        call.send().await.map_err(err)?;
        Ok(())
    }

    /// Point the table's route for `destination` at another target.
    pub async fn replace_route(
        &self,
        table: &str,
        destination: &str,
        target: &RouteTarget,
    ) -> Result<(), Error> {
        let mut call = self
            .inner
            .replace_route()
            .route_table_id(table)
            .destination_cidr_block(destination);
        call = match target {
            RouteTarget::Gateway(g) => call.gateway_id(g),
            RouteTarget::NatGateway(n) => call.nat_gateway_id(n),
        };
        call.send().await.map_err(err)?;
        Ok(())
    }

    /// Remove the table's route for `destination` (never `local`).
    pub async fn delete_route(&self, table: &str, destination: &str) -> Result<(), Error> {
        self.inner
            .delete_route()
            .route_table_id(table)
            .destination_cidr_block(destination)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Make `table` the route table of `subnet` (of the same VPC, not
    /// explicitly associated yet); the association's id.
    pub async fn associate_route_table(&self, table: &str, subnet: &str) -> Result<String, Error> {
        let r = self
            .inner
            .associate_route_table()
            .route_table_id(table)
            .subnet_id(subnet)
            .send()
            .await
            .map_err(err)?;
        Ok(r.association_id().unwrap_or_default().to_string())
    }

    /// End an association: the subnet falls back to the VPC's main table.
    pub async fn disassociate_route_table(&self, association: &str) -> Result<(), Error> {
        self.inner
            .disassociate_route_table()
            .association_id(association)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The account's Elastic IP addresses.
    pub async fn addresses(&self) -> Result<Vec<Address>, Error> {
        let r = self.inner.describe_addresses().send().await.map_err(err)?;
        Ok(r.addresses().iter().map(address).collect())
    }

    /// A new Elastic IP address for use in a VPC.
    pub async fn allocate_address(&self, tags: &[(String, String)]) -> Result<Address, Error> {
        let r = self
            .inner
            .allocate_address()
            .domain(types::DomainType::Vpc)
            .tag_specifications(tag_spec(types::ResourceType::ElasticIp, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(Address {
            allocation: r.allocation_id().unwrap_or_default().to_string(),
            public_ip: r.public_ip().unwrap_or_default().to_string(),
            association: None,
            instance: None,
            tags: tags.to_vec(),
        })
    }

    /// Give an Elastic IP back; refused (`InvalidIPAddress.InUse`) while
    /// it is associated.
    pub async fn release_address(&self, allocation: &str) -> Result<(), Error> {
        self.inner
            .release_address()
            .allocation_id(allocation)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Make the Elastic IP `instance`'s public address (in place of the
    /// one it got at launch); the association's id.
    pub async fn associate_address(
        &self,
        allocation: &str,
        instance: &str,
    ) -> Result<String, Error> {
        let r = self
            .inner
            .associate_address()
            .allocation_id(allocation)
            .instance_id(instance)
            .send()
            .await
            .map_err(err)?;
        Ok(r.association_id().unwrap_or_default().to_string())
    }

    /// Take an Elastic IP off its instance, which gets an automatic public
    /// address back where its subnet gives those.
    pub async fn disassociate_address(&self, association: &str) -> Result<(), Error> {
        self.inner
            .disassociate_address()
            .association_id(association)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The region's NAT gateways but deleted ones (all pages).
    pub async fn nat_gateways(&self) -> Result<Vec<NatGateway>, Error> {
        let all = self
            .inner
            .describe_nat_gateways()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(err)?;
        Ok(all
            .iter()
            .map(nat_gateway)
            .filter(|n| n.state != "deleted")
            .collect())
    }

    /// A new public NAT gateway in `subnet` with the Elastic IP
    /// `allocation`; its id (it is `pending` until `available`, or
    /// `failed`).
    pub async fn create_nat_gateway(
        &self,
        subnet: &str,
        allocation: &str,
        private_ip: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let r = self
            .inner
            .create_nat_gateway()
            .subnet_id(subnet)
            .allocation_id(allocation)
            .set_private_ip_address(private_ip.map(str::to_string))
            .tag_specifications(tag_spec(types::ResourceType::Natgateway, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.nat_gateway()
            .and_then(|n| n.nat_gateway_id())
            .unwrap_or_default()
            .to_string())
    }

    /// Delete a NAT gateway: `deleting`, then `deleted`, its address freed.
    pub async fn delete_nat_gateway(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_nat_gateway()
            .nat_gateway_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn security_groups(&self) -> Result<Vec<SecurityGroup>, Error> {
        let r = self
            .inner
            .describe_security_groups()
            .send()
            .await
            .map_err(err)?;
        Ok(r.security_groups()
            .iter()
            .map(|g| SecurityGroup {
                id: g.group_id().unwrap_or_default().to_string(),
                name: g.group_name().unwrap_or_default().to_string(),
                vpc: g.vpc_id().unwrap_or_default().to_string(),
                ingress: g.ip_permissions().iter().map(rule).collect(),
                egress: g.ip_permissions_egress().iter().map(rule).collect(),
                other_sources: g
                    .ip_permissions()
                    .iter()
                    .flat_map(|p| {
                        let groups = p.user_id_group_pairs().iter().filter_map(|u| u.group_id());
                        let lists = p
                            .prefix_list_ids()
                            .iter()
                            .filter_map(|l| l.prefix_list_id());
                        groups.chain(lists).map(String::from)
                    })
                    .collect(),
                tags: tags(g.tags()),
            })
            .collect())
    }

    /// A new security group in `vpc` with no ingress; its id.
    pub async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc: &str,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let r = self
            .inner
            .create_security_group()
            .group_name(name)
            .description(description)
            .vpc_id(vpc)
            .tag_specifications(tag_spec(types::ResourceType::SecurityGroup, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.group_id().unwrap_or_default().to_string())
    }

    pub async fn authorize_ingress(&self, group: &str, rules: &[Rule]) -> Result<(), Error> {
        if rules.is_empty() {
            return Ok(());
        }
        self.inner
            .authorize_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(rules.iter().map(permission).collect()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn revoke_ingress(&self, group: &str, rules: &[Rule]) -> Result<(), Error> {
        if rules.is_empty() {
            return Ok(());
        }
        self.inner
            .revoke_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(rules.iter().map(permission).collect()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Allow outbound traffic to `rules`' destinations.
    pub async fn authorize_egress(&self, group: &str, rules: &[Rule]) -> Result<(), Error> {
        if rules.is_empty() {
            return Ok(());
        }
        self.inner
            .authorize_security_group_egress()
            .group_id(group)
            .set_ip_permissions(Some(rules.iter().map(permission).collect()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn revoke_egress(&self, group: &str, rules: &[Rule]) -> Result<(), Error> {
        if rules.is_empty() {
            return Ok(());
        }
        self.inner
            .revoke_security_group_egress()
            .group_id(group)
            .set_ip_permissions(Some(rules.iter().map(permission).collect()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn delete_security_group(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_security_group()
            .group_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// A snapshot of `volume`; its id (it is `pending` until completed).
    pub async fn create_snapshot(
        &self,
        volume: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> Result<String, Error> {
        let r = self
            .inner
            .create_snapshot()
            .volume_id(volume)
            .description(description)
            .tag_specifications(tag_spec(types::ResourceType::Snapshot, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(r.snapshot_id().unwrap_or_default().to_string())
    }

    /// The account's own snapshots (all pages).
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .describe_snapshots()
                .owner_ids("self")
                .set_next_token(token.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(page.snapshots().iter().map(|s| {
                Snapshot {
                    id: s.snapshot_id().unwrap_or_default().to_string(),
                    volume: s.volume_id().unwrap_or_default().to_string(),
                    state: s
                        .state()
                        .map(|x| x.as_str().to_string())
                        .unwrap_or_default(),
                    started_ms: s
                        .start_time()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or_default(),
                    tags: tags(s.tags()),
                }
            }));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<(), Error> {
        self.inner
            .delete_snapshot()
            .snapshot_id(id)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The instance's security groups, all at once: EC2 replaces the set.
    pub async fn set_groups(&self, id: &str, groups: &[String]) -> Result<(), Error> {
        self.inner
            .modify_instance_attribute()
            .instance_id(id)
            .set_groups(Some(groups.to_vec()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    /// AMI `image` as EC2 describes it, if it exists.
    async fn image(&self, image: &str) -> Result<Option<types::Image>, Error> {
        let r = self
            .inner
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(err)?;
        Ok(r.images().first().cloned())
    }

    /// The available AMIs of `owner` whose names match `name` (EC2's
    /// wildcards: `*`, `?`), newest first.
    pub async fn images_named(&self, owner: &str, name: &str) -> Result<Vec<Image>, Error> {
        let filter = |k: &str, v: &str| types::Filter::builder().name(k).values(v).build();
        let r = self
            .inner
            .describe_images()
            .owners(owner)
            .filters(filter("name", name))
            .filters(filter("state", "available"))
            .send()
            .await
            .map_err(err)?;
        let mut out: Vec<Image> = r.images().iter().filter_map(Image::from_sdk).collect();
        // ISO 8601 times in one zone sort as text; ties by name, then id, so
        // the choice never depends on the order EC2 answers in.
        out.sort_by(|a, b| (&b.created, &b.name, &b.id).cmp(&(&a.created, &a.name, &a.id)));
        Ok(out)
    }

    /// The AMIs `ids` as EC2 describes them; an id it no longer has
    /// (deregistered) is left out rather than failing the rest.
    pub async fn images(&self, ids: &[String]) -> Result<Vec<Image>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let all = self
            .inner
            .describe_images()
            .set_image_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(err);
        match all {
            Ok(r) => Ok(r.images().iter().filter_map(Image::from_sdk).collect()),
            Err(e) if e.code.starts_with("InvalidAMIID.") => {
                let mut out = Vec::new();
                for id in ids {
                    match self.image(id).await {
                        Ok(i) => out.extend(i.as_ref().and_then(Image::from_sdk)),
                        Err(e) if e.code.starts_with("InvalidAMIID.") => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    /// The name of AMI `image` (it says which OS, and so which login).
    pub async fn image_name(&self, image: &str) -> Result<Option<String>, Error> {
        let i = self.image(image).await?;
        Ok(i.and_then(|i| i.name().map(String::from)))
    }

    /// The root device name of AMI `image` (`/dev/xvda`, `/dev/sda1`, …).
    pub async fn image_root_device(&self, image: &str) -> Result<Option<String>, Error> {
        let i = self.image(image).await?;
        Ok(i.and_then(|i| i.root_device_name().map(String::from)))
    }

    /// Names of the key pairs in the region.
    pub async fn key_pairs(&self) -> Result<Vec<String>, Error> {
        let r = self.inner.describe_key_pairs().send().await.map_err(err)?;
        Ok(r.key_pairs()
            .iter()
            .filter_map(|k| k.key_name().map(String::from))
            .collect())
    }

    /// Upload `public_key` (an OpenSSH line) as the key pair `name`.
    pub async fn import_key_pair(
        &self,
        name: &str,
        public_key: &str,
        tags: &[(String, String)],
    ) -> Result<(), Error> {
        self.inner
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public_key.as_bytes()))
            .tag_specifications(tag_spec(types::ResourceType::KeyPair, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }
}
