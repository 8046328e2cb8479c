//! Amazon EC2's Query API (`Action=…&Version=2016-11-15`, form-encoded,
//! XML answers in the shapes `aws-sdk-ec2` parses), SigV4-checked like the
//! Lightsail emulator.
//!
//! Instances are real test hosts (see [`super::Cloud`]), booted from the
//! user data and key pair tidekeeper sends, read as cloud-init reads them;
//! the AMI is Debian's, so the keys let `admin` in and root only hears
//! which user to log in as. It enforces what EC2 enforces: a private IP
//! inside its subnet's CIDR and outside the addresses AWS reserves (on the
//! host's `ens5`, as on EC2, so services can bind to it), an instance type
//! changed only on a stopped instance (`IncorrectInstanceState`),
//! termination protection (`OperationNotPermitted`), a stop that keeps the
//! disk, and security groups: only what their ingress rules admit reaches
//! the host, from outside (`eth0`) and from inside its VPC (`ens5`)
//! (nftables in the host's network namespace; an instance in no group is in
//! its VPC's default group, which admits only the group's own members).
//!
//! VPCs are networks as code: VPCs, subnets, internet gateways, route
//! tables, NAT gateways and Elastic IPs, with EC2's rules and error codes
//! (ranges, overlaps, dependencies, attachments). Each VPC is a testbed
//! network (a bridge): its instances' `ens5` are on it, so they reach each
//! other over their private addresses (the `local` route) and instances of
//! other VPCs do not. An instance gets a public address (the test host's
//! own) only in a subnet that maps public IPs on launch. An Elastic IP is a
//! free address of the testbed's range (an unclaimed slot's host address,
//! the slot held while allocated): associated, it is on the instance's host
//! and routed to it from this machine, and is the instance's public address.
//! The account starts with one VPC ([`VPC`], [`VPC_CIDR`]) whose subnet
//! [`SUBNET`] maps public IPs and routes 0.0.0.0/0 to the attached [`IGW`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::{Cloud, PortRule, cloud_init};

#[allow(unused_imports)]
pub use super::lightsail::{ACCESS_KEY, REGION, SECRET_KEY};

pub const SUBNET: &str = "subnet-0a1b2c3d";
pub const SUBNET_CIDR: &str = "10.20.13.0/24";
pub const VPC: &str = "vpc-0a1b2c3d";
/// [`VPC`]'s range.
pub const VPC_CIDR: &str = "10.20.0.0/16";
/// The internet gateway attached to [`VPC`] from the start.
pub const IGW: &str = "igw-0a1b2c3d";
/// [`VPC`]'s main route table: `local`, and 0.0.0.0/0 to [`IGW`].
pub const MAIN_ROUTE_TABLE: &str = "rtb-0a1b2c3d";
/// Debian 12's AMI (its default login is `admin`).
pub const AMI: &str = "ami-0abcdef1234567890";
/// Debian 12's arm64 AMI (Graviton: t4g, m7g, c7g).
pub const AMI_ARM64: &str = "ami-0bbbb00000000002";
/// The account that publishes Debian's official AMIs.
pub const DEBIAN_OWNER: &str = "136693071363";

/// An AMI the region offers.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// `creationDate`, ISO 8601 as EC2 writes it.
    pub created: String,
    /// `arm64` or `x86_64`, from the name as Debian and Ubuntu write it.
    pub architecture: String,
}

impl Image {
    pub fn new(id: &str, name: &str, owner: &str, created: &str) -> Image {
        Image {
            id: id.into(),
            name: name.into(),
            owner: owner.into(),
            created: created.into(),
            architecture: if name.contains("arm64") {
                "arm64"
            } else {
                "x86_64"
            }
            .into(),
        }
    }
}

/// The region's images at the start: Debian 12 of two months (the newest is
/// [`AMI`]), its arm64 build, and an Ubuntu image of another owner. All
/// boot the same test host; Debian's let `admin` in.
fn catalogue() -> Vec<Image> {
    vec![
        Image::new(
            AMI,
            "debian-12-amd64-20261201-1",
            DEBIAN_OWNER,
            "2026-12-01T10:00:00.000Z",
        ),
        Image::new(
            "ami-0aaaa00000000001",
            "debian-12-amd64-20261101-1",
            DEBIAN_OWNER,
            "2026-11-01T10:00:00.000Z",
        ),
        Image::new(
            AMI_ARM64,
            "debian-12-arm64-20261201-1",
            DEBIAN_OWNER,
            "2026-12-01T10:00:00.000Z",
        ),
        Image::new(
            "ami-0cccc00000000003",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261120",
            "099720109477",
            "2026-11-20T10:00:00.000Z",
        ),
    ]
}

/// What an instance type runs: arm64 for Graviton families (a generation
/// digit followed by `g`: t4g, m7g, c6gn) and a1, x86_64 for the rest.
fn type_architecture(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or_default();
    let generation = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let after = generation.trim_start_matches(|c: char| c.is_ascii_digit());
    if family == "a1" || (after.len() < generation.len() && after.starts_with('g')) {
        "arm64"
    } else {
        "x86_64"
    }
}

/// EC2's name filter: `*` any run of characters, `?` any one.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard(&pattern[1..], name) || (!name.is_empty() && wildcard(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard(&pattern[1..], &name[1..]),
        _ => false,
    }
}
/// The size of the AMIs' root snapshot, GB.
pub const AMI_ROOT_GB: u32 = 8;

/// The VPC's default security group: no ingress from outside the group.
pub const DEFAULT_GROUP: &str = "sg-00000000default";

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub image: String,
    pub state: String,
    pub subnet: String,
    pub private_ip: String,
    /// The test host's address, once it has booted.
    pub public_ip: Option<String>,
    pub tags: Vec<(String, String)>,
    pub groups: Vec<String>,
    pub volume: String,
    /// Its root EBS volume's size, GB, and type.
    pub volume_gb: u32,
    pub volume_type: String,
    pub protected: bool,
    pub imds_v2: bool,
    /// The test host behind it, once booted.
    pub host: Option<usize>,
    /// Its host is (re)booting: open until SSH is up, then behind its groups.
    booting: bool,
    /// Its subnet mapped public IPs when it launched: it has an automatic
    /// public address while no Elastic IP is associated.
    auto_public: bool,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What an instance made by hand was made as.
pub struct Existing<'a> {
    pub instance_type: &'a str,
    pub image: &'a str,
    /// Its fixed address in [`SUBNET`] (None: the next one).
    pub private_ip: Option<&'a str>,
}

/// One ingress rule: `-1` (every protocol) or tcp/udp/icmp with a port range.
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub cidrs: Vec<String>,
    pub ipv6_cidrs: Vec<String>,
}

/// TCP `port` from `cidr`.
pub fn permission(port: i32, cidr: &str) -> Permission {
    Permission {
        protocol: "tcp".into(),
        from: port,
        to: port,
        cidrs: vec![cidr.into()],
        ipv6_cidrs: Vec::new(),
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub vpc: String,
    pub ingress: Vec<Permission>,
    /// Outbound rules: EC2 gives a new group one allowing all IPv4.
    pub egress: Vec<Permission>,
    pub tags: Vec<(String, String)>,
}

/// The outbound rule EC2 puts in every new security group.
fn allow_all_out() -> Vec<Permission> {
    vec![Permission {
        protocol: "-1".into(),
        from: -1,
        to: -1,
        cidrs: vec!["0.0.0.0/0".into()],
        ipv6_cidrs: Vec::new(),
    }]
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub volume: String,
    /// `pending` while the disk is copied, then `completed`.
    pub state: String,
    pub started: String,
    pub tags: Vec<(String, String)>,
    pub disk: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    pub cidr: String,
    pub tags: Vec<(String, String)>,
    /// The testbed network carrying its traffic, made when an instance
    /// first needs it.
    pub bridge: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc: String,
    pub cidr: String,
    pub zone: String,
    pub map_public_ip: bool,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct InternetGateway {
    pub id: String,
    /// The VPCs it is attached to (EC2: one at most).
    pub vpcs: Vec<String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub destination: String,
    /// `local`, an internet gateway's id or a NAT gateway's.
    pub target: String,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub id: String,
    pub vpc: String,
    /// The main association's id, for the VPC's main table.
    pub main: Option<String>,
    pub routes: Vec<Route>,
    /// (association id, subnet id) of its explicit associations.
    pub associations: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct NatGateway {
    pub id: String,
    pub vpc: String,
    pub subnet: String,
    /// `pending` (on its first describe), then `available` or `failed`;
    /// `deleting` (on the describe after DeleteNatGateway), then `deleted`.
    pub state: String,
    pub allocation: String,
    pub public_ip: String,
    /// Its network interface's address in its subnet.
    pub private_ip: String,
    /// (failureCode, failureMessage) once failed.
    pub failure: Option<(String, String)>,
    pub created: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Address {
    pub allocation: String,
    pub public_ip: String,
    pub association: Option<String>,
    /// The instance it is associated with.
    pub instance: Option<String>,
    /// The NAT gateway using it.
    pub nat: Option<String>,
    pub tags: Vec<(String, String)>,
}

pub struct Account {
    pub instances: BTreeMap<String, Instance>,
    /// The AMIs DescribeImages knows and RunInstances launches.
    pub images: Vec<Image>,
    pub groups: BTreeMap<String, Group>,
    pub key_pairs: BTreeMap<String, String>,
    pub snapshots: BTreeMap<String, Snapshot>,
    pub vpcs: BTreeMap<String, Vpc>,
    pub subnets: BTreeMap<String, Subnet>,
    pub internet_gateways: BTreeMap<String, InternetGateway>,
    pub route_tables: BTreeMap<String, RouteTable>,
    pub nat_gateways: BTreeMap<String, NatGateway>,
    pub addresses: BTreeMap<String, Address>,
    /// The testbed slot each Elastic IP holds, by allocation id.
    slots: HashMap<String, EipSlot>,
    next: u32,
}

impl Default for Account {
    fn default() -> Account {
        let default = Group {
            id: DEFAULT_GROUP.into(),
            name: "default".into(),
            vpc: VPC.into(),
            ingress: Vec::new(),
            egress: allow_all_out(),
            tags: Vec::new(),
        };
        let vpc = Vpc {
            id: VPC.into(),
            cidr: VPC_CIDR.into(),
            tags: Vec::new(),
            bridge: None,
        };
        let subnet = Subnet {
            id: SUBNET.into(),
            vpc: VPC.into(),
            cidr: SUBNET_CIDR.into(),
            zone: format!("{REGION}a"),
            map_public_ip: true,
            tags: Vec::new(),
        };
        let igw = InternetGateway {
            id: IGW.into(),
            vpcs: vec![VPC.into()],
            tags: Vec::new(),
        };
        let mut main = RouteTable::main(MAIN_ROUTE_TABLE, &vpc);
        main.routes.push(Route {
            destination: "0.0.0.0/0".into(),
            target: IGW.into(),
        });
        Account {
            instances: BTreeMap::new(),
            images: catalogue(),
            groups: BTreeMap::from([(DEFAULT_GROUP.to_string(), default)]),
            key_pairs: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            vpcs: BTreeMap::from([(VPC.to_string(), vpc)]),
            subnets: BTreeMap::from([(SUBNET.to_string(), subnet)]),
            internet_gateways: BTreeMap::from([(IGW.to_string(), igw)]),
            route_tables: BTreeMap::from([(MAIN_ROUTE_TABLE.to_string(), main)]),
            nat_gateways: BTreeMap::new(),
            addresses: BTreeMap::new(),
            slots: HashMap::new(),
            next: 0,
        }
    }
}

impl RouteTable {
    /// A VPC's main table as CreateVpc makes it: the `local` route only.
    fn main(id: &str, vpc: &Vpc) -> RouteTable {
        RouteTable {
            id: id.into(),
            vpc: vpc.id.clone(),
            main: Some(format!("rtbassoc-{}", id.trim_start_matches("rtb-"))),
            routes: vec![Route {
                destination: vpc.cidr.clone(),
                target: "local".into(),
            }],
            associations: Vec::new(),
            tags: Vec::new(),
        }
    }
}

impl Account {
    fn next(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    /// The VPC instance `i` is in.
    fn vpc_of(&self, i: &Instance) -> String {
        self.subnets
            .get(&i.subnet)
            .map_or_else(|| VPC.to_string(), |s| s.vpc.clone())
    }

    /// The default security group of `vpc`.
    fn default_group(&self, vpc: &str) -> Option<&Group> {
        self.groups
            .values()
            .find(|g| g.vpc == vpc && g.name == "default")
    }

    /// The internet gateway attached to `vpc`, if any.
    fn gateway_of(&self, vpc: &str) -> Option<&InternetGateway> {
        self.internet_gateways
            .values()
            .find(|g| g.vpcs.iter().any(|v| v == vpc))
    }

    /// Whether `ip` is taken in `subnet` (by a live instance or a NAT
    /// gateway's interface).
    fn ip_taken(&self, subnet: &str, ip: &str) -> bool {
        self.instances
            .values()
            .any(|i| i.subnet == subnet && i.private_ip == ip && i.state != "terminated")
            || self
                .nat_gateways
                .values()
                .any(|n| n.subnet == subnet && n.private_ip == ip && n.state != "deleted")
    }

    /// The lowest free address of `subnet` that AWS does not reserve.
    fn free_ip(&self, subnet: &Subnet) -> Option<String> {
        let (net, bits) = parse_cidr(&subnet.cidr)?;
        let size = 1u64 << (32 - bits);
        (4..size - 1)
            .map(|k| Ipv4Addr::from(net + k as u32).to_string())
            .find(|ip| !self.ip_taken(&subnet.id, ip))
    }
}

#[derive(Clone)]
struct Ctx {
    account: Arc<Mutex<Account>>,
    cloud: Cloud,
    /// The rules each instance's host has, as last applied.
    enforced: Arc<Mutex<HashMap<usize, String>>>,
}

#[derive(Clone)]
pub struct Ec2 {
    pub url: String,
    pub account: Arc<Mutex<Account>>,
    pub cloud: Cloud,
    ctx: Ctx,
}

impl Ec2 {
    pub fn start(cloud: Cloud) -> Ec2 {
        let account = Arc::new(Mutex::new(Account::default()));
        let ctx = Ctx {
            account: account.clone(),
            cloud: cloud.clone(),
            enforced: Default::default(),
        };
        let app = axum::Router::new().fallback(handle).with_state(ctx.clone());
        let (url, _) = super::serve(app);
        Ec2 {
            url,
            account,
            cloud,
            ctx,
        }
    }

    /// A security group made outside tidekeeper, admitting `ingress`; its id.
    pub fn add_group(&self, name: &str, ingress: Vec<Permission>) -> String {
        let mut a = self.account.lock().unwrap();
        let id = format!("sg-{:017x}", a.next());
        let g = Group {
            id: id.clone(),
            name: name.into(),
            vpc: VPC.into(),
            ingress,
            egress: allow_all_out(),
            tags: Vec::new(),
        };
        a.groups.insert(id.clone(), g);
        id
    }

    /// A running instance made before this test's tidekeeper ran: booted
    /// as a test host that lets the bed's key in as `admin`, in `groups`,
    /// tagged `tags`; its id.
    pub fn add_existing(
        &self,
        instance_type: &str,
        protected: bool,
        groups: &[&str],
        tags: &[(&str, &str)],
    ) -> String {
        self.add_existing_from(
            Existing {
                instance_type,
                image: AMI,
                private_ip: None,
            },
            protected,
            groups,
            tags,
        )
    }

    /// [`Ec2::add_existing`] of another image or at a fixed private address.
    pub fn add_existing_from(
        &self,
        made: Existing<'_>,
        protected: bool,
        groups: &[&str],
        tags: &[(&str, &str)],
    ) -> String {
        let key = self.cloud.bed.lock().unwrap().public_key.clone();
        let (id, ip) = {
            let mut a = self.account.lock().unwrap();
            let n = a.next();
            let subnet = a.subnets[SUBNET].clone();
            let private_ip = match made.private_ip {
                Some(ip) => ip.to_string(),
                None => a.free_ip(&subnet).expect("a free address in SUBNET"),
            };
            let i = Instance {
                id: format!("i-{n:017x}"),
                instance_type: made.instance_type.into(),
                image: made.image.into(),
                state: "pending".into(),
                subnet: SUBNET.into(),
                private_ip,
                public_ip: None,
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                volume: format!("vol-{n:017x}"),
                volume_gb: AMI_ROOT_GB,
                volume_type: "gp3".into(),
                protected,
                imds_v2: true,
                host: None,
                booting: true,
                auto_public: subnet.map_public_ip,
            };
            let out = (i.id.clone(), i.private_ip.clone());
            a.instances.insert(i.id.clone(), i);
            out
        };
        let init = super::super::testbed::CloudInit {
            authorized: vec![key],
            login: Some("admin".into()),
            ..Default::default()
        };
        boot(&self.ctx, &id, &ip, &init);
        id
    }

    /// A new AMI comes out in the region (as Debian publishes monthly).
    pub fn publish_image(&self, image: Image) {
        self.account.lock().unwrap().images.push(image);
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.account.lock().unwrap().instances.get(id).cloned()
    }

    /// The live instance for tidekeeper host `host` (its tag, else its `Name`).
    pub fn instance_for(&self, host: &str) -> Option<Instance> {
        let a = self.account.lock().unwrap();
        let live = || a.instances.values().filter(|i| i.state != "terminated");
        live()
            .find(|i| i.tag("tidekeeper-host") == Some(host))
            .or_else(|| live().find(|i| i.tag("Name") == Some(host)))
            .cloned()
    }

    pub fn instances(&self) -> Vec<Instance> {
        let a = self.account.lock().unwrap();
        a.instances
            .values()
            .filter(|i| i.state != "terminated")
            .cloned()
            .collect()
    }

    pub fn group_named(&self, name: &str) -> Option<Group> {
        let a = self.account.lock().unwrap();
        a.groups.values().find(|g| g.name == name).cloned()
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        let a = self.account.lock().unwrap();
        a.snapshots.values().cloned().collect()
    }

    pub fn vpcs(&self) -> Vec<Vpc> {
        let a = self.account.lock().unwrap();
        a.vpcs.values().cloned().collect()
    }

    pub fn subnets(&self) -> Vec<Subnet> {
        let a = self.account.lock().unwrap();
        a.subnets.values().cloned().collect()
    }

    /// The subnet tagged `Name: name`.
    pub fn subnet_named(&self, name: &str) -> Option<Subnet> {
        let a = self.account.lock().unwrap();
        let named = |s: &&Subnet| s.tags.iter().any(|(k, v)| k == "Name" && v == name);
        a.subnets.values().find(named).cloned()
    }

    pub fn internet_gateways(&self) -> Vec<InternetGateway> {
        let a = self.account.lock().unwrap();
        a.internet_gateways.values().cloned().collect()
    }

    pub fn route_tables(&self) -> Vec<RouteTable> {
        let a = self.account.lock().unwrap();
        a.route_tables.values().cloned().collect()
    }

    /// NAT gateways, deleted ones too (EC2 lists them for a while).
    pub fn nat_gateways(&self) -> Vec<NatGateway> {
        let a = self.account.lock().unwrap();
        a.nat_gateways.values().cloned().collect()
    }

    pub fn addresses(&self) -> Vec<Address> {
        let a = self.account.lock().unwrap();
        a.addresses.values().cloned().collect()
    }

    /// The network namespace of instance `id`'s test host, once booted:
    /// to run what the instance would run, from where it is.
    pub fn netns_of(&self, id: &str) -> Option<String> {
        let host = self.instance(id)?.host?;
        Some(self.cloud.bed.lock().unwrap().netns(host))
    }
}

/// Boot the test host for instance `id` (blocking), put its `ens5` (the
/// primary network interface's name on EC2's Nitro instances, so what a
/// config binds to there works here) on its VPC's network with its private
/// address, and mark it running behind its security groups.
fn boot(ctx: &Ctx, id: &str, private_ip: &str, init: &super::super::testbed::CloudInit) {
    let (host, addr) = ctx.cloud.boot(init);
    let (vpc, cidr, prefix) = {
        let a = ctx.account.lock().unwrap();
        let subnet = a.instances.get(id).map(|i| i.subnet.clone());
        let s = subnet.and_then(|s| a.subnets.get(&s)).expect("its subnet");
        let v = &a.vpcs[&s.vpc];
        let prefix = s.cidr.split_once('/').unwrap().1.to_string();
        (v.id.clone(), v.cidr.clone(), prefix)
    };
    let net = bridge(ctx, &vpc);
    let ns = {
        let bed = ctx.cloud.bed.lock().unwrap();
        bed.network_attach(&net, host, &format!("{private_ip}/{prefix}"), "ens5");
        bed.netns(host)
    };
    // The `local` route: the whole VPC is on the link, whichever subnet.
    ip(&["-n", &ns, "route", "replace", &cidr, "dev", "ens5"]);
    if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(id) {
        i.host = Some(host);
        if i.auto_public && i.public_ip.is_none() {
            i.public_ip = Some(addr.to_string());
        }
        i.booting = false;
    }
    enforce(ctx);
    if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(id) {
        i.state = "running".into();
    }
}

/// `ip ARGS`, which must succeed.
#[track_caller]
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// `ip ARGS` where failing is fine (undoing what may be gone already).
fn ip_quiet(args: &[&str]) {
    let _ = std::process::Command::new("ip").args(args).output();
}

/// The testbed network of `vpc`, made on first use.
fn bridge(ctx: &Ctx, vpc: &str) -> String {
    // Made outside the account's lock (the bed may be busy booting a
    // host); the first of two made at once is kept.
    if let Some(b) = ctx
        .account
        .lock()
        .unwrap()
        .vpcs
        .get(vpc)
        .and_then(|v| v.bridge.clone())
    {
        return b;
    }
    let made = ctx.cloud.bed.lock().unwrap().network_create();
    let kept = {
        let mut a = ctx.account.lock().unwrap();
        let v = a.vpcs.get_mut(vpc).expect("the instance's VPC");
        v.bridge.get_or_insert_with(|| made.clone()).clone()
    };
    if kept != made {
        ctx.cloud.bed.lock().unwrap().network_remove(&made);
    }
    kept
}

fn set_booting(ctx: &Ctx, id: &str, on: bool) {
    if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(id) {
        i.booting = on;
    }
}

/// Every running instance's host admits only what its security groups'
/// ingress rules admit (as EC2 does in front of an instance), from outside
/// and from its VPC alike.
fn enforce(ctx: &Ctx) {
    // Computed under the lock of what was applied: two requests never apply
    // their views of the account in the other order.
    super::enforce_firewalls(&ctx.cloud, &ctx.enforced, || {
        let a = ctx.account.lock().unwrap();
        let live = || {
            a.instances
                .values()
                .filter(|i| !i.booting && i.state != "terminated" && i.state != "shutting-down")
        };
        // An instance in no group is in its VPC's default group.
        let groups_of = |i: &Instance| -> Vec<String> {
            if i.groups.is_empty() {
                let vpc = a.vpc_of(i);
                let default = a
                    .default_group(&vpc)
                    .map_or(DEFAULT_GROUP, |g| g.id.as_str());
                vec![default.to_string()]
            } else {
                i.groups.clone()
            }
        };
        live()
            .filter_map(|i| {
                let host = i.host?;
                let groups = groups_of(i);
                let of = |list: fn(&Group) -> &Vec<Permission>| -> Vec<PortRule> {
                    groups
                        .iter()
                        .filter_map(|g| a.groups.get(g))
                        .flat_map(|g| list(g).iter())
                        .map(port_rule)
                        .collect()
                };
                let mut ingress = of(|g| &g.ingress);
                // A default group admits its own members (EC2's rule
                // naming the group itself).
                let vpc = a.vpc_of(i);
                for g in groups.iter().filter_map(|g| a.groups.get(g)) {
                    if g.name != "default" {
                        continue;
                    }
                    let members: Vec<String> = live()
                        .filter(|j| a.vpc_of(j) == vpc && groups_of(j).contains(&g.id))
                        .map(|j| format!("{}/32", j.private_ip))
                        .collect();
                    if !members.is_empty() {
                        ingress.push(PortRule {
                            proto: "any".into(),
                            ports: None,
                            from: members,
                        });
                    }
                }
                let egress = of(|g| &g.egress);
                // EC2's allow-all outbound rule: nothing to filter.
                let open_out = egress
                    .iter()
                    .any(|r| r.proto == "any" && r.from.iter().any(|c| c == "0.0.0.0/0"));
                let script = firewall_nft(&ingress)
                    + &super::cloud_egress_nft((!open_out).then_some(&egress[..]));
                Some((host, script))
            })
            .collect()
    });
}

/// The nftables script that makes a host admit only `rules` on its public
/// interface and on its VPC's (`ens5`), as a security group does.
fn firewall_nft(rules: &[PortRule]) -> String {
    let mut s = String::from("table inet cloud_fw\ndelete table inet cloud_fw\n");
    s.push_str("table inet cloud_fw {\n chain input {\n  type filter hook input priority -20; policy accept;\n");
    s.push_str(
        "  iifname != { \"eth0\", \"ens5\" } accept\n  ct state established,related accept\n",
    );
    s.push_str(&super::nft_accepts(rules, "saddr"));
    s.push_str("  drop\n }\n}\n");
    s
}

/// A rule as the test host's nftables script takes it.
fn port_rule(p: &Permission) -> PortRule {
    PortRule {
        proto: match p.protocol.as_str() {
            "-1" => "any".into(),
            other => other.into(),
        },
        ports: (p.protocol != "-1" && p.from >= 0).then_some((p.from as u16, p.to as u16)),
        from: p.cidrs.iter().chain(&p.ipv6_cidrs).cloned().collect(),
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn answer(action: &str, inner: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>00000000-0000-0000-0000-000000000000</requestId>{inner}</{action}Response>"
    );
    ([("content-type", "text/xml;charset=UTF-8")], body).into_response()
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
        xml_escape(message)
    );
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [("content-type", "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

fn no_instance(id: &str) -> Response {
    error(
        400,
        "InvalidInstanceID.NotFound",
        &format!("The instance ID '{id}' does not exist"),
    )
}

fn state_code(s: &str) -> u32 {
    match s {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        "terminated" => 48,
        "stopping" => 64,
        _ => 80,
    }
}

fn tags_xml(tags: &[(String, String)]) -> String {
    let items: String = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "<item><key>{}</key><value>{}</value></item>",
                xml_escape(k),
                xml_escape(v)
            )
        })
        .collect();
    format!("<tagSet>{items}</tagSet>")
}

fn instance_xml(a: &Account, i: &Instance) -> String {
    let groups: String = i
        .groups
        .iter()
        .map(|g| {
            let name = a.groups.get(g).map(|g| g.name.as_str()).unwrap_or(g);
            format!("<item><groupId>{g}</groupId><groupName>{name}</groupName></item>")
        })
        .collect();
    let public = i
        .public_ip
        .as_ref()
        .map(|ip| format!("<ipAddress>{ip}</ipAddress>"))
        .unwrap_or_default();
    format!(
        "<item><instanceId>{}</instanceId><imageId>{}</imageId><instanceState><code>{}</code><name>{}</name></instanceState><instanceType>{}</instanceType><placement><availabilityZone>{REGION}a</availabilityZone></placement><subnetId>{}</subnetId><vpcId>{}</vpcId><privateIpAddress>{}</privateIpAddress>{public}<rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>{}</volumeId><status>attached</status></ebs></item></blockDeviceMapping><groupSet>{groups}</groupSet>{}<metadataOptions><httpTokens>{}</httpTokens></metadataOptions></item>",
        i.id,
        i.image,
        state_code(&i.state),
        i.state,
        i.instance_type,
        i.subnet,
        a.vpc_of(i),
        i.private_ip,
        i.volume,
        tags_xml(&i.tags),
        if i.imds_v2 { "required" } else { "optional" }
    )
}

fn permissions_xml(list: &[Permission]) -> String {
    list.iter()
        .map(|p| {
            let v4: String = p
                .cidrs
                .iter()
                .map(|c| format!("<item><cidrIp>{c}</cidrIp></item>"))
                .collect();
            let v6: String = p
                .ipv6_cidrs
                .iter()
                .map(|c| format!("<item><cidrIpv6>{c}</cidrIpv6></item>"))
                .collect();
            let ports = if p.protocol == "-1" {
                String::new()
            } else {
                format!("<fromPort>{}</fromPort><toPort>{}</toPort>", p.from, p.to)
            };
            format!(
                "<item><ipProtocol>{}</ipProtocol>{ports}<groups/><ipRanges>{v4}</ipRanges><ipv6Ranges>{v6}</ipv6Ranges></item>",
                p.protocol
            )
        })
        .collect()
}

fn group_xml(g: &Group) -> String {
    format!(
        "<item><ownerId>123456789012</ownerId><groupId>{}</groupId><groupName>{}</groupName><groupDescription>{}</groupDescription><vpcId>{}</vpcId><ipPermissions>{}</ipPermissions><ipPermissionsEgress>{}</ipPermissionsEgress>{}</item>",
        g.id,
        xml_escape(&g.name),
        xml_escape(&g.name),
        g.vpc,
        permissions_xml(&g.ingress),
        permissions_xml(&g.egress),
        tags_xml(&g.tags)
    )
}

fn snapshot_xml(s: &Snapshot) -> String {
    format!(
        "<item><snapshotId>{}</snapshotId><volumeId>{}</volumeId><status>{}</status><startTime>{}</startTime><progress>100%</progress><ownerId>123456789012</ownerId><volumeSize>20</volumeSize>{}</item>",
        s.id,
        s.volume,
        s.state,
        s.started,
        tags_xml(&s.tags)
    )
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let bits: u32 = bits.parse().unwrap();
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// `Prefix.1`, `Prefix.2`, … values.
fn list(f: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|n| f.get(&format!("{prefix}.{n}")).cloned())
        .collect()
}

/// `Prefix.N.Key` / `Prefix.N.Value` pairs.
fn pairs(f: &BTreeMap<String, String>, prefix: &str) -> Vec<(String, String)> {
    (1..)
        .map_while(|m| {
            let k = f.get(&format!("{prefix}.{m}.Key"))?;
            let v = f.get(&format!("{prefix}.{m}.Value")).cloned();
            Some((k.clone(), v.unwrap_or_default()))
        })
        .collect()
}

fn tags_of(f: &BTreeMap<String, String>, kind: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in 1.. {
        let Some(t) = f.get(&format!("TagSpecification.{n}.ResourceType")) else {
            break;
        };
        if t == kind {
            out.extend(pairs(f, &format!("TagSpecification.{n}.Tag")));
        }
    }
    out
}

/// `IpPermissions.N.…` of an authorize or revoke call.
fn permissions(f: &BTreeMap<String, String>) -> Vec<Permission> {
    (1..)
        .map_while(|n| {
            let p = format!("IpPermissions.{n}");
            let protocol = f.get(&format!("{p}.IpProtocol"))?.clone();
            let port = |k: &str| {
                f.get(&format!("{p}.{k}"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(-1)
            };
            Some(Permission {
                from: if protocol == "-1" {
                    -1
                } else {
                    port("FromPort")
                },
                to: if protocol == "-1" { -1 } else { port("ToPort") },
                protocol,
                cidrs: (1..)
                    .map_while(|m| f.get(&format!("{p}.IpRanges.{m}.CidrIp")).cloned())
                    .collect(),
                ipv6_cidrs: (1..)
                    .map_while(|m| f.get(&format!("{p}.Ipv6Ranges.{m}.CidrIpv6")))
                    .map(|c| ipv6_as_stored(c))
                    .collect(),
            })
        })
        .collect()
}

/// EC2 stores an IPv6 range in its short lowercase form, whatever was sent
/// (`2001:DB8:0::/32` is listed as `2001:db8::/32`).
fn ipv6_as_stored(c: &str) -> String {
    match c.split_once('/') {
        Some((a, p)) => match a.parse::<std::net::Ipv6Addr>() {
            Ok(a) => format!("{a}/{p}"),
            Err(_) => c.to_string(),
        },
        None => c.to_string(),
    }
}

async fn handle(
    State(ctx): State<Ctx>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, code, message)) =
        super::lightsail::check_auth(&headers, method.as_str(), &uri, &body)
    {
        return error(status, code, message);
    }
    let f = form(&body);
    if f.get("Version").map(String::as_str) != Some("2016-11-15") {
        return error(400, "InvalidParameterValue", "Version must be 2016-11-15");
    }
    let action = f.get("Action").cloned().unwrap_or_default();
    let response = route(&ctx, &action, &f);
    enforce(&ctx);
    response
}

fn route(ctx: &Ctx, action: &str, f: &BTreeMap<String, String>) -> Response {
    let mut a = ctx.account.lock().unwrap();
    let a = &mut *a;
    match action {
        "RunInstances" => run(ctx, a, f),
        "DescribeInstances" => {
            let ids = list(f, "InstanceId");
            if let Some(id) = ids.iter().find(|id| !a.instances.contains_key(*id)) {
                return no_instance(id);
            }
            let items: String = a
                .instances
                .values()
                .filter(|i| ids.is_empty() || ids.contains(&i.id))
                .map(|i| instance_xml(a, i))
                .collect();
            answer(
                action,
                &format!(
                    "<reservationSet><item><reservationId>r-0001</reservationId><ownerId>123456789012</ownerId><instancesSet>{items}</instancesSet></item></reservationSet>"
                ),
            )
        }
        "StopInstances" | "StartInstances" | "TerminateInstances" => power(ctx, a, action, f),
        "ModifyInstanceAttribute" => modify(a, f),
        "DescribeInstanceAttribute" => {
            let id = f.get("InstanceId").cloned().unwrap_or_default();
            let Some(i) = a.instances.get(&id) else {
                return no_instance(&id);
            };
            answer(
                action,
                &format!(
                    "<instanceId>{id}</instanceId><disableApiTermination><value>{}</value></disableApiTermination>",
                    i.protected
                ),
            )
        }
        "DescribeVolumes" => describe_volumes(a, f),
        "CreateTags" | "DeleteTags" => tag(a, action, f),
        "DescribeVpcs" | "CreateVpc" | "DeleteVpc" => vpc(ctx, a, action, f),
        "DescribeSubnets" | "CreateSubnet" | "ModifySubnetAttribute" | "DeleteSubnet" => {
            subnet(a, action, f)
        }
        "DescribeInternetGateways"
        | "CreateInternetGateway"
        | "AttachInternetGateway"
        | "DetachInternetGateway"
        | "DeleteInternetGateway" => internet_gateway(a, action, f),
        "DescribeRouteTables"
        | "CreateRouteTable"
        | "DeleteRouteTable"
        | "CreateRoute"
        | "ReplaceRoute"
        | "DeleteRoute"
        | "AssociateRouteTable"
        | "DisassociateRouteTable" => route_table(a, action, f),
        "DescribeAddresses"
        | "AllocateAddress"
        | "ReleaseAddress"
        | "AssociateAddress"
        | "DisassociateAddress" => address(ctx, a, action, f),
        "DescribeNatGateways" | "CreateNatGateway" | "DeleteNatGateway" => {
            nat_gateway(a, action, f)
        }
        "DescribeImages" => describe_images(a, f),
        "DescribeKeyPairs" => {
            let items: String = a
                .key_pairs
                .keys()
                .map(|k| {
                    format!(
                        "<item><keyName>{}</keyName><keyFingerprint>00:11</keyFingerprint></item>",
                        xml_escape(k)
                    )
                })
                .collect();
            answer(action, &format!("<keySet>{items}</keySet>"))
        }
        "ImportKeyPair" => import_key_pair(a, f),
        "DescribeSecurityGroups"
        | "CreateSecurityGroup"
        | "DeleteSecurityGroup"
        | "AuthorizeSecurityGroupIngress"
        | "RevokeSecurityGroupIngress"
        | "AuthorizeSecurityGroupEgress"
        | "RevokeSecurityGroupEgress" => security_group(a, action, f),
        "CreateSnapshot" | "DescribeSnapshots" | "DeleteSnapshot" => snapshot(ctx, a, action, f),
        _ => error(
            400,
            "InvalidAction",
            &format!("The action {action} is not valid for this web service."),
        ),
    }
}

/// DescribeVolumes by `VolumeId.N` (each must exist, as in EC2): the root
/// volumes of instances not terminated.
fn describe_volumes(a: &Account, f: &BTreeMap<String, String>) -> Response {
    let ids = list(f, "VolumeId");
    let live = || a.instances.values().filter(|i| i.state != "terminated");
    if let Some(id) = ids.iter().find(|id| !live().any(|i| &i.volume == *id)) {
        return error(
            400,
            "InvalidVolume.NotFound",
            &format!("The volume '{id}' does not exist."),
        );
    }
    let items: String = live()
        .filter(|i| ids.is_empty() || ids.contains(&i.volume))
        .map(|i| {
            format!(
                "<item><volumeId>{}</volumeId><size>{}</size><volumeType>{}</volumeType><availabilityZone>{REGION}a</availabilityZone><status>in-use</status></item>",
                i.volume, i.volume_gb, i.volume_type
            )
        })
        .collect();
    answer(
        "DescribeVolumes",
        &format!("<volumeSet>{items}</volumeSet>"),
    )
}

/// DescribeImages by `ImageId.N` (each must exist, as in EC2), `Owner.N`
/// and the `name` filter (wildcards); other filters are refused rather than
/// ignored, so a client relying on one is noticed.
fn describe_images(a: &Account, f: &BTreeMap<String, String>) -> Response {
    let ids = list(f, "ImageId");
    if let Some(missing) = ids.iter().find(|id| !a.images.iter().any(|i| &i.id == *id)) {
        let (code, what) = if missing.starts_with("ami-") {
            ("InvalidAMIID.NotFound", "does not exist")
        } else {
            ("InvalidAMIID.Malformed", "is malformed")
        };
        return error(400, code, &format!("The image id '[{missing}]' {what}"));
    }
    let owners = list(f, "Owner");
    let mut names = Vec::new();
    for n in 1.. {
        let Some(filter) = f.get(&format!("Filter.{n}.Name")) else {
            break;
        };
        let values = list(f, &format!("Filter.{n}.Value"));
        match filter.as_str() {
            "name" => names.push(values),
            "state" if values.iter().all(|v| v == "available") => {}
            other => {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("The filter '{other}' is not supported here"),
                );
            }
        }
    }
    let items: String = a
        .images
        .iter()
        .filter(|i| ids.is_empty() || ids.contains(&i.id))
        .filter(|i| owners.is_empty() || owners.contains(&i.owner))
        .filter(|i| {
            names
                .iter()
                .all(|vs| vs.iter().any(|v| wildcard(v.as_bytes(), i.name.as_bytes())))
        })
        .map(|i| {
            format!(
                "<item><imageId>{}</imageId><name>{}</name><imageOwnerId>{}</imageOwnerId><creationDate>{}</creationDate><imageState>available</imageState><architecture>{}</architecture><rootDeviceName>/dev/xvda</rootDeviceName></item>",
                i.id,
                xml_escape(&i.name),
                i.owner,
                i.created,
                i.architecture
            )
        })
        .collect();
    answer("DescribeImages", &format!("<imagesSet>{items}</imagesSet>"))
}

fn import_key_pair(a: &mut Account, f: &BTreeMap<String, String>) -> Response {
    let name = f.get("KeyName").cloned().unwrap_or_default();
    if a.key_pairs.contains_key(&name) {
        return error(
            400,
            "InvalidKeyPair.Duplicate",
            &format!("The keypair '{name}' already exists."),
        );
    }
    use base64::Engine;
    let material = f.get("PublicKeyMaterial").cloned().unwrap_or_default();
    let key = base64::engine::general_purpose::STANDARD
        .decode(material.as_bytes())
        .ok()
        .and_then(|k| String::from_utf8(k).ok())
        .filter(|k| k.split_whitespace().count() >= 2);
    let Some(key) = key else {
        return error(
            400,
            "InvalidKey.Format",
            "Key is not in valid OpenSSH public key format",
        );
    };
    a.key_pairs.insert(name.clone(), key.trim().to_string());
    answer(
        "ImportKeyPair",
        &format!(
            "<keyName>{name}</keyName><keyFingerprint>00:11</keyFingerprint><keyPairId>key-0001</keyPairId>"
        ),
    )
}

fn run(ctx: &Ctx, a: &mut Account, f: &BTreeMap<String, String>) -> Response {
    let subnet = f.get("SubnetId").cloned().unwrap_or_else(|| SUBNET.into());
    let Some(net) = a.subnets.get(&subnet).cloned() else {
        return no_subnet(&subnet);
    };
    let image = f.get("ImageId").cloned().unwrap_or_default();
    let Some(ami) = a.images.iter().find(|i| i.id == image) else {
        return error(
            400,
            "InvalidAMIID.NotFound",
            &format!("The image id '[{image}]' does not exist"),
        );
    };
    let runs = type_architecture(f.get("InstanceType").map_or("", String::as_str));
    if ami.architecture != runs {
        return error(
            400,
            "InvalidParameterValue",
            &format!(
                "The architecture '{runs}' of the specified instance type does not match the \
                 architecture '{}' of the specified AMI. Specify an instance type and an AMI that \
                 have matching architectures, and try again.",
                ami.architecture
            ),
        );
    }
    let groups = list(f, "SecurityGroupId");
    if let Some(g) = groups.iter().find(|g| !a.groups.contains_key(*g)) {
        return error(
            400,
            "InvalidGroup.NotFound",
            &format!("The security group '{g}' does not exist"),
        );
    }
    if let Some(g) = groups.iter().find(|g| a.groups[*g].vpc != net.vpc) {
        return error(
            400,
            "InvalidParameter",
            &format!("Security group {g} and subnet {subnet} belong to different networks."),
        );
    }
    let mut keys = Vec::new();
    if let Some(k) = f.get("KeyName") {
        match a.key_pairs.get(k) {
            Some(pk) => keys.push(pk.clone()),
            None => {
                return error(
                    400,
                    "InvalidKeyPair.NotFound",
                    &format!("The key pair '{k}' does not exist"),
                );
            }
        }
    }
    let ip = match f.get("PrivateIpAddress") {
        Some(ip) => {
            let Some(p) = ip
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|p| in_cidr(*p, &net.cidr))
            else {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("Address {ip} does not fall within the subnet's address range"),
                );
            };
            // The first four addresses and the last: the network, the VPC
            // router, DNS, one kept for later, and the broadcast address.
            let (first, bits) = parse_cidr(&net.cidr).unwrap();
            let k = u32::from(p) - first;
            if k < 4 || u64::from(k) == (1u64 << (32 - bits)) - 1 {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("Address {ip} is in subnet's reserved address range"),
                );
            }
            if a.ip_taken(&subnet, ip) {
                return error(
                    400,
                    "InvalidIPAddress.InUse",
                    &format!("Address {ip} is in use."),
                );
            }
            ip.clone()
        }
        None => match a.free_ip(&net) {
            Some(ip) => ip,
            None => {
                return error(
                    400,
                    "InsufficientFreeAddressesInSubnet",
                    &format!(
                        "There are not enough free addresses in subnet '{subnet}' to satisfy the requested number of instances."
                    ),
                );
            }
        },
    };
    let n = a.next();
    use base64::Engine;
    let user_data = f
        .get("UserData")
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .unwrap_or_default();
    let i = Instance {
        id: format!("i-{n:017x}"),
        instance_type: f
            .get("InstanceType")
            .cloned()
            .unwrap_or_else(|| "m1.small".into()),
        image,
        state: "pending".into(),
        subnet,
        private_ip: ip.clone(),
        public_ip: None,
        tags: tags_of(f, "instance"),
        groups,
        volume: format!("vol-{n:017x}"),
        // The AMI's snapshot size and EC2's gp2, unless the mapping says.
        volume_gb: f
            .get("BlockDeviceMapping.1.Ebs.VolumeSize")
            .and_then(|g| g.parse().ok())
            .unwrap_or(AMI_ROOT_GB),
        volume_type: f
            .get("BlockDeviceMapping.1.Ebs.VolumeType")
            .cloned()
            .unwrap_or_else(|| "gp2".into()),
        protected: f.get("DisableApiTermination").map(String::as_str) == Some("true"),
        imds_v2: f.get("MetadataOptions.HttpTokens").map(String::as_str) == Some("required"),
        host: None,
        booting: true,
        auto_public: net.map_public_ip,
    };
    let xml = instance_xml(a, &i);
    let id = i.id.clone();
    a.instances.insert(i.id.clone(), i);
    let mut init = cloud_init(&user_data, &keys);
    init.login = Some("admin".into());
    let ctx = ctx.clone();
    std::thread::spawn(move || boot(&ctx, &id, &ip, &init));
    answer(
        "RunInstances",
        &format!(
            "<reservationId>r-{n:04}</reservationId><ownerId>123456789012</ownerId><instancesSet>{xml}</instancesSet>"
        ),
    )
}

/// Stop, start or terminate: the state moves on once the test host has
/// powered off, booted again or gone.
fn power(ctx: &Ctx, a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let ids = list(f, "InstanceId");
    let mut items = String::new();
    for id in &ids {
        let Some(i) = a.instances.get_mut(id) else {
            return no_instance(id);
        };
        let before = i.state.clone();
        let (next, done) = match action {
            "TerminateInstances" if i.protected => {
                return error(
                    400,
                    "OperationNotPermitted",
                    &format!(
                        "The instance '{id}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again."
                    ),
                );
            }
            "TerminateInstances" if before == "terminated" => ("terminated", None),
            "TerminateInstances" => ("shutting-down", Some("terminated")),
            "StopInstances" if before == "running" => ("stopping", Some("stopped")),
            "StartInstances" if before == "stopped" => ("pending", Some("running")),
            "StopInstances" if matches!(before.as_str(), "stopped" | "stopping") => {
                (before.as_str(), None)
            }
            "StartInstances" if matches!(before.as_str(), "running" | "pending") => {
                (before.as_str(), None)
            }
            _ => {
                return error(
                    400,
                    "IncorrectInstanceState",
                    &format!(
                        "The instance '{id}' is not in a state from which it can be {action}."
                    ),
                );
            }
        };
        let next = next.to_string();
        i.state = next.clone();
        if action == "TerminateInstances" {
            // Its Elastic IP is disassociated (its host, and so the
            // address on it and the route to it, go with the instance).
            for e in a.addresses.values_mut() {
                if e.instance.as_deref() == Some(id.as_str()) {
                    e.instance = None;
                    e.association = None;
                }
            }
        }
        let Some(i) = a.instances.get_mut(id) else {
            return no_instance(id);
        };
        if let (Some(done), Some(host)) = (done, i.host) {
            let (ctx, id, action) = (ctx.clone(), id.clone(), action.to_string());
            std::thread::spawn(move || {
                match action.as_str() {
                    "TerminateInstances" => ctx.cloud.remove(host),
                    "StopInstances" => ctx.cloud.power_off(host),
                    _ => {
                        // Open while it boots (its groups may shut out the
                        // wait for SSH), then behind its groups again.
                        set_booting(&ctx, &id, true);
                        ctx.enforced.lock().unwrap().remove(&host);
                        let open = super::cloud_firewall_nft(None) + &super::cloud_egress_nft(None);
                        ctx.cloud.bed.lock().unwrap().nft(host, &open);
                        ctx.cloud.power_on(host);
                        set_booting(&ctx, &id, false);
                        enforce(&ctx);
                    }
                }
                if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(&id) {
                    i.state = done.into();
                }
            });
        } else if let Some(done) = done {
            i.state = done.into();
        }
        items.push_str(&format!("<item><instanceId>{id}</instanceId><currentState><code>{}</code><name>{next}</name></currentState><previousState><code>{}</code><name>{before}</name></previousState></item>", state_code(&next), state_code(&before)));
    }
    answer(action, &format!("<instancesSet>{items}</instancesSet>"))
}

fn modify(a: &mut Account, f: &BTreeMap<String, String>) -> Response {
    let id = f.get("InstanceId").cloned().unwrap_or_default();
    let Some(i) = a.instances.get_mut(&id) else {
        return no_instance(&id);
    };
    if let Some(t) = f.get("InstanceType.Value") {
        if i.state != "stopped" {
            return error(
                400,
                "IncorrectInstanceState",
                &format!("The instance '{id}' is not in the 'stopped' state."),
            );
        }
        i.instance_type = t.clone();
    }
    if let Some(p) = f.get("DisableApiTermination.Value") {
        i.protected = p == "true";
    }
    // GroupId.N replaces the instance's groups, each of its own VPC.
    let groups = list(f, "GroupId");
    if !groups.is_empty() {
        if let Some(g) = groups.iter().find(|g| !a.groups.contains_key(*g)) {
            return no_group(g);
        }
        let Some(i) = a.instances.get_mut(&id) else {
            return no_instance(&id);
        };
        i.groups = groups;
    }
    answer("ModifyInstanceAttribute", "<return>true</return>")
}

fn tag(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let given = pairs(f, "Tag");
    for r in list(f, "ResourceId") {
        let tags = if let Some(i) = a.instances.get_mut(&r) {
            &mut i.tags
        } else if let Some(s) = a.snapshots.get_mut(&r) {
            &mut s.tags
        } else if let Some(g) = a.groups.get_mut(&r) {
            &mut g.tags
        } else if let Some(v) = a.vpcs.get_mut(&r) {
            &mut v.tags
        } else if let Some(s) = a.subnets.get_mut(&r) {
            &mut s.tags
        } else if let Some(g) = a.internet_gateways.get_mut(&r) {
            &mut g.tags
        } else if let Some(t) = a.route_tables.get_mut(&r) {
            &mut t.tags
        } else if let Some(n) = a.nat_gateways.get_mut(&r) {
            &mut n.tags
        } else if let Some(e) = a.addresses.get_mut(&r) {
            &mut e.tags
        } else {
            return error(400, "InvalidID", &format!("The ID '{r}' is not valid"));
        };
        for (k, v) in &given {
            tags.retain(|t| t.0 != *k);
            if action == "CreateTags" {
                tags.push((k.clone(), v.clone()));
            }
        }
    }
    answer(action, "<return>true</return>")
}

fn no_group(id: &str) -> Response {
    error(
        400,
        "InvalidGroup.NotFound",
        &format!("The security group '{id}' does not exist"),
    )
}

fn security_group(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let id = f.get("GroupId").cloned().unwrap_or_default();
    match action {
        "DescribeSecurityGroups" => {
            let items: String = a.groups.values().map(group_xml).collect();
            answer(
                action,
                &format!("<securityGroupInfo>{items}</securityGroupInfo>"),
            )
        }
        "CreateSecurityGroup" => {
            let name = f.get("GroupName").cloned().unwrap_or_default();
            let vpc = f.get("VpcId").cloned().unwrap_or_else(|| VPC.into());
            if !a.vpcs.contains_key(&vpc) {
                return no_vpc(&vpc);
            }
            if a.groups.values().any(|g| g.name == name && g.vpc == vpc) {
                return error(
                    400,
                    "InvalidGroup.Duplicate",
                    &format!("The security group '{name}' already exists for VPC '{vpc}'"),
                );
            }
            let id = format!("sg-{:017x}", a.next());
            let g = Group {
                id: id.clone(),
                name,
                vpc,
                ingress: Vec::new(),
                egress: allow_all_out(),
                tags: tags_of(f, "security-group"),
            };
            a.groups.insert(id.clone(), g);
            answer(
                action,
                &format!("<return>true</return><groupId>{id}</groupId>"),
            )
        }
        "DeleteSecurityGroup" => {
            if a.groups.get(&id).is_some_and(|g| g.name == "default") {
                return error(
                    400,
                    "CannotDelete",
                    &format!(
                        "the specified group: \"{id}\" name: \"default\" cannot be deleted by a user"
                    ),
                );
            }
            if a.instances
                .values()
                .any(|i| i.state != "terminated" && i.groups.contains(&id))
            {
                return error(
                    400,
                    "DependencyViolation",
                    &format!("resource {id} has a dependent object"),
                );
            }
            match a.groups.remove(&id) {
                Some(_) => answer(action, "<return>true</return>"),
                None => no_group(&id),
            }
        }
        _ => {
            let Some(g) = a.groups.get_mut(&id) else {
                return no_group(&id);
            };
            let list = if action.ends_with("Egress") {
                &mut g.egress
            } else {
                &mut g.ingress
            };
            for p in permissions(f) {
                let same = |q: &Permission| {
                    (q.protocol.as_str(), q.from, q.to) == (p.protocol.as_str(), p.from, p.to)
                };
                if action.starts_with("Authorize") {
                    if list.iter().any(|q| {
                        same(q)
                            && q.cidrs
                                .iter()
                                .chain(&q.ipv6_cidrs)
                                .any(|c| p.cidrs.contains(c) || p.ipv6_cidrs.contains(c))
                    }) {
                        return error(
                            400,
                            "InvalidPermission.Duplicate",
                            "the specified rule already exists",
                        );
                    }
                    match list.iter_mut().find(|q| same(q)) {
                        Some(q) => {
                            q.cidrs.extend(p.cidrs);
                            q.ipv6_cidrs.extend(p.ipv6_cidrs);
                        }
                        None => list.push(p),
                    }
                } else {
                    let Some(q) = list.iter_mut().find(|q| same(q)) else {
                        return error(
                            400,
                            "InvalidPermission.NotFound",
                            "The specified rule does not exist in this security group.",
                        );
                    };
                    q.cidrs.retain(|c| !p.cidrs.contains(c));
                    q.ipv6_cidrs.retain(|c| !p.ipv6_cidrs.contains(c));
                    list.retain(|q| !q.cidrs.is_empty() || !q.ipv6_cidrs.is_empty());
                }
            }
            answer(action, "<return>true</return>")
        }
    }
}

fn snapshot(ctx: &Ctx, a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    match action {
        "DescribeSnapshots" => {
            let items: String = a.snapshots.values().map(snapshot_xml).collect();
            answer(action, &format!("<snapshotSet>{items}</snapshotSet>"))
        }
        "CreateSnapshot" => {
            let volume = f.get("VolumeId").cloned().unwrap_or_default();
            let Some(host) = a
                .instances
                .values()
                .find(|i| i.volume == volume && i.state != "terminated")
                .map(|i| i.host)
            else {
                return error(
                    400,
                    "InvalidVolume.NotFound",
                    &format!("The volume '{volume}' does not exist."),
                );
            };
            let id = format!("snap-{:017x}", a.next());
            let s = Snapshot {
                id: id.clone(),
                volume,
                state: "pending".into(),
                started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                tags: tags_of(f, "snapshot"),
                disk: None,
            };
            let xml = snapshot_xml(&s)
                .trim_start_matches("<item>")
                .trim_end_matches("</item>")
                .to_string();
            a.snapshots.insert(id.clone(), s);
            // The disk is copied in the background, as EBS does.
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                let disk = host.map(|h| ctx.cloud.bed.lock().unwrap().snapshot_disk(h));
                if let Some(s) = ctx.account.lock().unwrap().snapshots.get_mut(&id) {
                    s.disk = disk;
                    s.state = "completed".into();
                }
            });
            answer(action, &xml)
        }
        _ => {
            let id = f.get("SnapshotId").cloned().unwrap_or_default();
            match a.snapshots.remove(&id) {
                Some(s) => {
                    if let Some(d) = s.disk {
                        let _ = std::fs::remove_dir_all(d);
                    }
                    answer(action, "<return>true</return>")
                }
                None => error(
                    400,
                    "InvalidSnapshot.NotFound",
                    &format!("The snapshot '{id}' does not exist."),
                ),
            }
        }
    }
}

// VPC networking: VPCs, subnets, internet gateways, route tables, Elastic
// IPs and NAT gateways.

/// `a.b.c.d/n` as (network, prefix length), host bits clear; None when it
/// is no CIDR block.
fn parse_cidr(c: &str) -> Option<(u32, u32)> {
    let (net, bits) = c.split_once('/')?;
    let net = u32::from(net.parse::<Ipv4Addr>().ok()?);
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    (net & mask == net).then_some((net, bits))
}

/// Whether two CIDR blocks share an address.
fn overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    let bits = a.1.min(b.1);
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    a.0 & mask == b.0 & mask
}

fn bad_cidr(parameter: &str, c: &str) -> Response {
    error(
        400,
        "InvalidParameterValue",
        &format!(
            "Value ({c}) for parameter {parameter} is invalid. This is not a valid CIDR block."
        ),
    )
}

fn no_vpc(id: &str) -> Response {
    error(
        400,
        "InvalidVpcID.NotFound",
        &format!("The vpc ID '{id}' does not exist"),
    )
}

fn no_subnet(id: &str) -> Response {
    error(
        400,
        "InvalidSubnetID.NotFound",
        &format!("The subnet ID '{id}' does not exist"),
    )
}

fn no_route_table(id: &str) -> Response {
    error(
        400,
        "InvalidRouteTableID.NotFound",
        &format!("The routeTable ID '{id}' does not exist"),
    )
}

fn no_internet_gateway(id: &str) -> Response {
    error(
        400,
        "InvalidInternetGatewayID.NotFound",
        &format!("The internetGateway ID '{id}' does not exist"),
    )
}

fn no_allocation(id: &str) -> Response {
    error(
        400,
        "InvalidAllocationID.NotFound",
        &format!("The allocation ID '{id}' does not exist"),
    )
}

fn no_association(id: &str) -> Response {
    error(
        400,
        "InvalidAssociationID.NotFound",
        &format!("The association ID '{id}' does not exist"),
    )
}

fn no_nat_gateway(id: &str) -> Response {
    error(
        400,
        "NatGatewayNotFound",
        &format!("The Nat Gateway {id} was not found"),
    )
}

/// EC2's refusal to delete what something still depends on.
fn dependencies(kind: &str, id: &str) -> Response {
    error(
        400,
        "DependencyViolation",
        &format!("The {kind} '{id}' has dependencies and cannot be deleted."),
    )
}

/// What the request's `Prefix.N` ids name (all of `have` without any);
/// the first id `have` lacks is the error.
fn wanted<'a, T>(
    f: &BTreeMap<String, String>,
    prefix: &str,
    have: &'a BTreeMap<String, T>,
) -> Result<Vec<&'a T>, String> {
    let ids = list(f, prefix);
    if let Some(id) = ids.iter().find(|id| !have.contains_key(*id)) {
        return Err(id.clone());
    }
    Ok(have
        .iter()
        .filter(|(k, _)| ids.is_empty() || ids.contains(k))
        .map(|(_, v)| v)
        .collect())
}

fn vpc_xml(v: &Vpc) -> String {
    format!(
        "<vpcId>{}</vpcId><ownerId>123456789012</ownerId><state>available</state><cidrBlock>{}</cidrBlock><dhcpOptionsId>dopt-0a1b2c3d</dhcpOptionsId><instanceTenancy>default</instanceTenancy><isDefault>false</isDefault>{}",
        v.id,
        v.cidr,
        tags_xml(&v.tags)
    )
}

fn vpc(ctx: &Ctx, a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    match action {
        "DescribeVpcs" => match wanted(f, "VpcId", &a.vpcs).map_err(|id| no_vpc(&id)) {
            Ok(vs) => {
                let items: String = vs
                    .iter()
                    .map(|v| format!("<item>{}</item>", vpc_xml(v)))
                    .collect();
                answer(action, &format!("<vpcSet>{items}</vpcSet>"))
            }
            Err(e) => e,
        },
        "CreateVpc" => {
            let cidr = f.get("CidrBlock").cloned().unwrap_or_default();
            let Some((_, bits)) = parse_cidr(&cidr) else {
                return bad_cidr("cidrBlock", &cidr);
            };
            if !(16..=28).contains(&bits) {
                return error(
                    400,
                    "InvalidVpc.Range",
                    &format!("The CIDR '{cidr}' is invalid."),
                );
            }
            let n = a.next();
            let v = Vpc {
                id: format!("vpc-{n:017x}"),
                cidr,
                tags: tags_of(f, "vpc"),
                bridge: None,
            };
            // Its main route table and default security group come with it.
            let table = RouteTable::main(&format!("rtb-{n:017x}"), &v);
            let group = Group {
                id: format!("sg-{n:017x}"),
                name: "default".into(),
                vpc: v.id.clone(),
                ingress: Vec::new(),
                egress: allow_all_out(),
                tags: Vec::new(),
            };
            let xml = vpc_xml(&v);
            a.route_tables.insert(table.id.clone(), table);
            a.groups.insert(group.id.clone(), group);
            a.vpcs.insert(v.id.clone(), v);
            answer(action, &format!("<vpc>{xml}</vpc>"))
        }
        _ => {
            let id = f.get("VpcId").cloned().unwrap_or_default();
            if !a.vpcs.contains_key(&id) {
                return no_vpc(&id);
            }
            let busy = a.subnets.values().any(|s| s.vpc == id)
                || a.gateway_of(&id).is_some()
                || a.route_tables
                    .values()
                    .any(|t| t.vpc == id && t.main.is_none())
                || a.groups
                    .values()
                    .any(|g| g.vpc == id && g.name != "default");
            if busy {
                return dependencies("vpc", &id);
            }
            a.route_tables.retain(|_, t| t.vpc != id);
            a.groups.retain(|_, g| g.vpc != id);
            let v = a.vpcs.remove(&id).expect("checked");
            if let Some(b) = v.bridge {
                // Not under the account's lock: the bed may be busy.
                let cloud = ctx.cloud.clone();
                std::thread::spawn(move || cloud.bed.lock().unwrap().network_remove(&b));
            }
            answer(action, "<return>true</return>")
        }
    }
}

fn subnet_xml(a: &Account, s: &Subnet) -> String {
    let size = parse_cidr(&s.cidr).map_or(0, |(_, bits)| 1u64 << (32 - bits));
    let used = a
        .instances
        .values()
        .filter(|i| i.subnet == s.id && i.state != "terminated")
        .count()
        + a.nat_gateways
            .values()
            .filter(|n| n.subnet == s.id && n.state != "deleted")
            .count();
    format!(
        "<subnetId>{}</subnetId><subnetArn>arn:aws:ec2:{REGION}:123456789012:subnet/{}</subnetArn><state>available</state><vpcId>{}</vpcId><cidrBlock>{}</cidrBlock><availableIpAddressCount>{}</availableIpAddressCount><availabilityZone>{}</availabilityZone><defaultForAz>false</defaultForAz><mapPublicIpOnLaunch>{}</mapPublicIpOnLaunch><ownerId>123456789012</ownerId>{}",
        s.id,
        s.id,
        s.vpc,
        s.cidr,
        size.saturating_sub(5 + used as u64),
        s.zone,
        s.map_public_ip,
        tags_xml(&s.tags)
    )
}

fn subnet(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    match action {
        "DescribeSubnets" => match wanted(f, "SubnetId", &a.subnets).map_err(|id| no_subnet(&id)) {
            Ok(ss) => {
                let items: String = ss
                    .iter()
                    .map(|s| format!("<item>{}</item>", subnet_xml(a, s)))
                    .collect();
                answer(action, &format!("<subnetSet>{items}</subnetSet>"))
            }
            Err(e) => e,
        },
        "CreateSubnet" => {
            let vpc = f.get("VpcId").cloned().unwrap_or_default();
            let Some(v) = a.vpcs.get(&vpc) else {
                return no_vpc(&vpc);
            };
            let cidr = f.get("CidrBlock").cloned().unwrap_or_default();
            let Some(block) = parse_cidr(&cidr) else {
                return bad_cidr("cidrBlock", &cidr);
            };
            let range = parse_cidr(&v.cidr).expect("a VPC's range");
            if !(16..=28).contains(&block.1) || block.1 < range.1 || !overlap(block, range) {
                return error(
                    400,
                    "InvalidSubnet.Range",
                    &format!("The CIDR '{cidr}' is invalid."),
                );
            }
            let taken = a
                .subnets
                .values()
                .filter(|s| s.vpc == vpc)
                .filter_map(|s| parse_cidr(&s.cidr))
                .any(|other| overlap(block, other));
            if taken {
                return error(
                    400,
                    "InvalidSubnet.Conflict",
                    &format!("The CIDR '{cidr}' conflicts with another subnet"),
                );
            }
            let zones = ["a", "b", "c"].map(|z| format!("{REGION}{z}"));
            let zone = f
                .get("AvailabilityZone")
                .cloned()
                .unwrap_or_else(|| zones[0].clone());
            if !zones.contains(&zone) {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!(
                        "Value ({zone}) for parameter availabilityZone is invalid. Subnets can currently only be created in the following availability zones: {}.",
                        zones.join(", ")
                    ),
                );
            }
            let s = Subnet {
                id: format!("subnet-{:017x}", a.next()),
                vpc,
                cidr,
                zone,
                // EC2's default outside a default VPC.
                map_public_ip: false,
                tags: tags_of(f, "subnet"),
            };
            let xml = subnet_xml(a, &s);
            a.subnets.insert(s.id.clone(), s);
            answer(action, &format!("<subnet>{xml}</subnet>"))
        }
        "ModifySubnetAttribute" => {
            let id = f.get("SubnetId").cloned().unwrap_or_default();
            let Some(s) = a.subnets.get_mut(&id) else {
                return no_subnet(&id);
            };
            if let Some(on) = f.get("MapPublicIpOnLaunch.Value") {
                s.map_public_ip = on == "true";
            }
            answer(action, "<return>true</return>")
        }
        _ => {
            let id = f.get("SubnetId").cloned().unwrap_or_default();
            if !a.subnets.contains_key(&id) {
                return no_subnet(&id);
            }
            let busy = a
                .instances
                .values()
                .any(|i| i.subnet == id && i.state != "terminated")
                || a.nat_gateways
                    .values()
                    .any(|n| n.subnet == id && n.state != "deleted");
            if busy {
                return dependencies("subnet", &id);
            }
            // Its route table associations go with it.
            for t in a.route_tables.values_mut() {
                t.associations.retain(|(_, s)| *s != id);
            }
            a.subnets.remove(&id);
            answer(action, "<return>true</return>")
        }
    }
}

fn internet_gateway_xml(g: &InternetGateway) -> String {
    let attached: String = g
        .vpcs
        .iter()
        .map(|v| format!("<item><vpcId>{v}</vpcId><state>available</state></item>"))
        .collect();
    format!(
        "<internetGatewayId>{}</internetGatewayId><ownerId>123456789012</ownerId><attachmentSet>{attached}</attachmentSet>{}",
        g.id,
        tags_xml(&g.tags)
    )
}

fn internet_gateway(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let id = f.get("InternetGatewayId").cloned().unwrap_or_default();
    let vpc = f.get("VpcId").cloned().unwrap_or_default();
    match action {
        "DescribeInternetGateways" => {
            match wanted(f, "InternetGatewayId", &a.internet_gateways)
                .map_err(|id| no_internet_gateway(&id))
            {
                Ok(gs) => {
                    let items: String = gs
                        .iter()
                        .map(|g| format!("<item>{}</item>", internet_gateway_xml(g)))
                        .collect();
                    answer(
                        action,
                        &format!("<internetGatewaySet>{items}</internetGatewaySet>"),
                    )
                }
                Err(e) => e,
            }
        }
        "CreateInternetGateway" => {
            let g = InternetGateway {
                id: format!("igw-{:017x}", a.next()),
                vpcs: Vec::new(),
                tags: tags_of(f, "internet-gateway"),
            };
            let xml = internet_gateway_xml(&g);
            a.internet_gateways.insert(g.id.clone(), g);
            answer(action, &format!("<internetGateway>{xml}</internetGateway>"))
        }
        "AttachInternetGateway" => {
            let Some(g) = a.internet_gateways.get(&id) else {
                return no_internet_gateway(&id);
            };
            if !a.vpcs.contains_key(&vpc) {
                return no_vpc(&vpc);
            }
            if let Some(on) = g.vpcs.first() {
                return error(
                    400,
                    "Resource.AlreadyAssociated",
                    &format!("resource {id} is already attached to network {on}"),
                );
            }
            if let Some(other) = a.gateway_of(&vpc) {
                return error(
                    400,
                    "Resource.AlreadyAssociated",
                    &format!(
                        "Network {vpc} already has an internet gateway ({}) attached",
                        other.id
                    ),
                );
            }
            a.internet_gateways
                .get_mut(&id)
                .expect("checked")
                .vpcs
                .push(vpc);
            answer(action, "<return>true</return>")
        }
        "DetachInternetGateway" => {
            let Some(g) = a.internet_gateways.get(&id) else {
                return no_internet_gateway(&id);
            };
            if !g.vpcs.contains(&vpc) {
                return error(
                    400,
                    "Gateway.NotAttached",
                    &format!("resource {id} is not attached to network {vpc}"),
                );
            }
            // Public addresses in the VPC need the gateway.
            let mapped = a
                .instances
                .values()
                .any(|i| i.state != "terminated" && i.public_ip.is_some() && a.vpc_of(i) == vpc)
                || a.nat_gateways
                    .values()
                    .any(|n| n.vpc == vpc && matches!(n.state.as_str(), "pending" | "available"));
            if mapped {
                return error(
                    400,
                    "DependencyViolation",
                    &format!(
                        "Network {vpc} has some mapped public address(es). Please unmap those public address(es) before detaching the gateway."
                    ),
                );
            }
            a.internet_gateways
                .get_mut(&id)
                .expect("checked")
                .vpcs
                .retain(|v| *v != vpc);
            answer(action, "<return>true</return>")
        }
        _ => {
            let Some(g) = a.internet_gateways.get(&id) else {
                return no_internet_gateway(&id);
            };
            if !g.vpcs.is_empty() {
                return dependencies("internetGateway", &id);
            }
            a.internet_gateways.remove(&id);
            answer(action, "<return>true</return>")
        }
    }
}

/// Whether a route's target still carries traffic (`active`) or not
/// (`blackhole`: a gateway detached or deleted).
fn route_state(a: &Account, vpc: &str, target: &str) -> &'static str {
    let alive = if target == "local" {
        true
    } else if target.starts_with("nat-") {
        a.nat_gateways
            .get(target)
            .is_some_and(|n| n.state == "available" || n.state == "pending")
    } else {
        a.internet_gateways
            .get(target)
            .is_some_and(|g| g.vpcs.iter().any(|v| v == vpc))
    };
    if alive { "active" } else { "blackhole" }
}

fn route_table_xml(a: &Account, t: &RouteTable) -> String {
    let routes: String = t
        .routes
        .iter()
        .map(|r| {
            let target = if r.target.starts_with("nat-") {
                format!("<natGatewayId>{}</natGatewayId>", r.target)
            } else {
                format!("<gatewayId>{}</gatewayId>", r.target)
            };
            let origin = if r.target == "local" {
                "CreateRouteTable"
            } else {
                "CreateRoute"
            };
            format!(
                "<item><destinationCidrBlock>{}</destinationCidrBlock>{target}<state>{}</state><origin>{origin}</origin></item>",
                r.destination,
                route_state(a, &t.vpc, &r.target)
            )
        })
        .collect();
    let main = t.main.iter().map(|m| {
        format!(
            "<item><routeTableAssociationId>{m}</routeTableAssociationId><routeTableId>{}</routeTableId><main>true</main><associationState><state>associated</state></associationState></item>",
            t.id
        )
    });
    let explicit = t.associations.iter().map(|(id, subnet)| {
        format!(
            "<item><routeTableAssociationId>{id}</routeTableAssociationId><routeTableId>{}</routeTableId><subnetId>{subnet}</subnetId><main>false</main><associationState><state>associated</state></associationState></item>",
            t.id
        )
    });
    let associations: String = main.chain(explicit).collect();
    format!(
        "<routeTableId>{}</routeTableId><vpcId>{}</vpcId><ownerId>123456789012</ownerId><routeSet>{routes}</routeSet><associationSet>{associations}</associationSet><propagatingVgwSet/>{}",
        t.id,
        t.vpc,
        tags_xml(&t.tags)
    )
}

fn route_table(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let id = f.get("RouteTableId").cloned().unwrap_or_default();
    match action {
        "DescribeRouteTables" => {
            match wanted(f, "RouteTableId", &a.route_tables).map_err(|id| no_route_table(&id)) {
                Ok(ts) => {
                    let items: String = ts
                        .iter()
                        .map(|t| format!("<item>{}</item>", route_table_xml(a, t)))
                        .collect();
                    answer(action, &format!("<routeTableSet>{items}</routeTableSet>"))
                }
                Err(e) => e,
            }
        }
        "CreateRouteTable" => {
            let vpc = f.get("VpcId").cloned().unwrap_or_default();
            let Some(v) = a.vpcs.get(&vpc) else {
                return no_vpc(&vpc);
            };
            let v = v.clone();
            let mut t = RouteTable::main(&format!("rtb-{:017x}", a.next()), &v);
            t.main = None;
            t.tags = tags_of(f, "route-table");
            let xml = route_table_xml(a, &t);
            a.route_tables.insert(t.id.clone(), t);
            answer(action, &format!("<routeTable>{xml}</routeTable>"))
        }
        "DeleteRouteTable" => {
            let Some(t) = a.route_tables.get(&id) else {
                return no_route_table(&id);
            };
            if t.main.is_some() || !t.associations.is_empty() {
                return dependencies("routeTable", &id);
            }
            a.route_tables.remove(&id);
            answer(action, "<return>true</return>")
        }
        "CreateRoute" | "ReplaceRoute" => {
            let Some(t) = a.route_tables.get(&id) else {
                return no_route_table(&id);
            };
            let destination = f.get("DestinationCidrBlock").cloned().unwrap_or_default();
            if parse_cidr(&destination).is_none() {
                return bad_cidr("destinationCidrBlock", &destination);
            }
            let target = match (f.get("GatewayId"), f.get("NatGatewayId")) {
                (Some(g), None) => g.clone(),
                (None, Some(n)) => n.clone(),
                _ => {
                    return error(
                        400,
                        "InvalidParameterCombination",
                        "The request must contain exactly one of gatewayId, natGatewayId",
                    );
                }
            };
            let existing = t.routes.iter().position(|r| r.destination == destination);
            match (action, existing) {
                ("CreateRoute", Some(_)) => {
                    return error(
                        400,
                        "RouteAlreadyExists",
                        &format!("The route identified by {destination} already exists."),
                    );
                }
                ("ReplaceRoute", None) => {
                    return error(
                        400,
                        "InvalidParameterValue",
                        &format!(
                            "There is no route defined for '{destination}' in the route table. Use CreateRoute instead."
                        ),
                    );
                }
                ("ReplaceRoute", Some(k)) if t.routes[k].target == "local" => {
                    return error(
                        400,
                        "InvalidParameterValue",
                        &format!("cannot replace local route {destination} in route table {id}"),
                    );
                }
                _ => {}
            }
            let vpc = t.vpc.clone();
            if target == "local" {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("cannot create a local route for {destination} in route table {id}"),
                );
            } else if target.starts_with("nat-") {
                let Some(n) = a.nat_gateways.get(&target).filter(|n| n.state != "deleted") else {
                    return error(
                        400,
                        "InvalidNatGatewayID.NotFound",
                        &format!("The natGateway ID '{target}' does not exist"),
                    );
                };
                if n.vpc != vpc {
                    return error(
                        400,
                        "InvalidParameterValue",
                        &format!(
                            "route table {id} and network gateway {target} belong to different networks"
                        ),
                    );
                }
            } else {
                let Some(g) = a.internet_gateways.get(&target) else {
                    return error(
                        400,
                        "InvalidGatewayID.NotFound",
                        &format!("The gateway ID '{target}' does not exist"),
                    );
                };
                if !g.vpcs.contains(&vpc) {
                    return error(
                        400,
                        "InvalidParameterValue",
                        &format!(
                            "route table {id} and network gateway {target} belong to different networks"
                        ),
                    );
                }
            }
            let t = a.route_tables.get_mut(&id).expect("checked");
            let route = Route {
                destination,
                target,
            };
            match existing {
                Some(k) => t.routes[k] = route,
                None => t.routes.push(route),
            }
            answer(action, "<return>true</return>")
        }
        "DeleteRoute" => {
            let Some(t) = a.route_tables.get_mut(&id) else {
                return no_route_table(&id);
            };
            let destination = f.get("DestinationCidrBlock").cloned().unwrap_or_default();
            let Some(k) = t.routes.iter().position(|r| r.destination == destination) else {
                return error(
                    400,
                    "InvalidRoute.NotFound",
                    &format!(
                        "no route with destination-cidr-block {destination} in route table {id}"
                    ),
                );
            };
            if t.routes[k].target == "local" {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("cannot remove local route {destination} in route table {id}"),
                );
            }
            t.routes.remove(k);
            answer(action, "<return>true</return>")
        }
        "AssociateRouteTable" => {
            let subnet = f.get("SubnetId").cloned().unwrap_or_default();
            let Some(t) = a.route_tables.get(&id) else {
                return no_route_table(&id);
            };
            let Some(s) = a.subnets.get(&subnet) else {
                return no_subnet(&subnet);
            };
            if s.vpc != t.vpc {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("Route table {id} and subnet {subnet} belong to different networks"),
                );
            }
            if a.route_tables
                .values()
                .any(|t| t.associations.iter().any(|(_, s)| *s == subnet))
            {
                return error(
                    400,
                    "Resource.AlreadyAssociated",
                    &format!(
                        "the specified association for route table {id} conflicts with an existing association"
                    ),
                );
            }
            let association = format!("rtbassoc-{:017x}", a.next());
            a.route_tables
                .get_mut(&id)
                .expect("checked")
                .associations
                .push((association.clone(), subnet));
            answer(
                action,
                &format!(
                    "<associationId>{association}</associationId><associationState><state>associated</state></associationState>"
                ),
            )
        }
        _ => {
            let association = f.get("AssociationId").cloned().unwrap_or_default();
            if a.route_tables
                .values()
                .any(|t| t.main.as_ref() == Some(&association))
            {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("cannot disassociate the main route table association {association}"),
                );
            }
            let Some(t) = a
                .route_tables
                .values_mut()
                .find(|t| t.associations.iter().any(|(x, _)| *x == association))
            else {
                return no_association(&association);
            };
            t.associations.retain(|(x, _)| *x != association);
            answer(action, "<return>true</return>")
        }
    }
}

/// The directory the testbed keeps its slots' lock files in (see `Slot`
/// in testbed.rs): an Elastic IP holds a slot as a host does.
const SLOT_LOCKS: &str = "/run/tidekeeper-testbed/slots";
/// How many slots 10.213.0.0/16 has (testbed.rs's `SLOTS`).
const SLOT_COUNT: u32 = 16_000;

/// A testbed slot held for an Elastic IP: its host address is the EIP.
/// While no instance has it, the slot's link (its controller side, as a
/// host's) leads to an empty namespace, so the address reaches nothing,
/// and nothing leaves this machine for it. The next claim of the slot
/// after this process cleans up what is left, as for a host's slot.
struct EipSlot {
    n: u32,
    _lock: std::fs::File,
}

impl EipSlot {
    fn netns(&self) -> String {
        format!("tk{}", self.n)
    }
    fn link(&self) -> String {
        format!("tk{}h", self.n)
    }
    fn address(&self, k: u32) -> Ipv4Addr {
        let b = self.n * 4 + k;
        Ipv4Addr::new(10, 213, (b >> 8) as u8, (b & 255) as u8)
    }

    /// Claim a free slot, from the top of the range down (hosts start
    /// anywhere, so rarely meet these); None when none is free.
    fn claim() -> Option<EipSlot> {
        for n in (0..SLOT_COUNT).rev() {
            let Ok(f) = std::fs::File::create(format!("{SLOT_LOCKS}/{n}.lock")) else {
                return None;
            };
            if f.try_lock().is_err() {
                continue;
            }
            // What an earlier run left: an Elastic IP's (an empty
            // namespace) is removed; a host's, still running, is left to
            // the testbed (and the slot to it).
            let ns = format!("tk{n}");
            if std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
                let pids = std::process::Command::new("ip")
                    .args(["netns", "pids", &ns])
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                if !pids.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
            }
            let slot = EipSlot { n, _lock: f };
            ip_quiet(&["link", "del", &slot.link()]);
            ip_quiet(&["netns", "del", &ns]);
            let (ns, link, peer) = (slot.netns(), slot.link(), format!("tk{n}c"));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", &peer, "up"]);
            ip(&[
                "addr",
                "add",
                &format!("{}/30", slot.address(1)),
                "dev",
                &link,
            ]);
            ip(&["link", "set", &link, "up"]);
            return Some(slot);
        }
        None
    }
}

impl Drop for EipSlot {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.link()]);
        ip_quiet(&["netns", "del", &self.netns()]);
    }
}

/// Put Elastic IP `eip` on test host `host`: on its public interface, and
/// routed to it from this machine (more specific than its slot's range).
fn address_on(ctx: &Ctx, host: usize, eip: &str, on: bool) {
    let (ns, link) = {
        let bed = ctx.cloud.bed.lock().unwrap();
        (bed.netns(host), bed.host(host).footprint().link)
    };
    let eip = format!("{eip}/32");
    if on {
        ip(&["-n", &ns, "addr", "replace", &eip, "dev", "eth0"]);
        ip(&["route", "replace", &eip, "dev", &link]);
    } else {
        ip_quiet(&["-n", &ns, "addr", "del", &eip, "dev", "eth0"]);
        ip_quiet(&["route", "del", &eip, "dev", &link]);
    }
}

fn address_xml(a: &Account, e: &Address) -> String {
    let mut used = String::new();
    if let Some(assoc) = &e.association {
        used.push_str(&format!("<associationId>{assoc}</associationId>"));
    }
    if let Some(i) = e.instance.as_ref().and_then(|i| a.instances.get(i)) {
        used.push_str(&format!(
            "<instanceId>{}</instanceId><networkInterfaceId>eni-{}</networkInterfaceId><privateIpAddress>{}</privateIpAddress>",
            i.id,
            i.id.trim_start_matches("i-"),
            i.private_ip
        ));
    }
    if let Some(n) = e.nat.as_ref().and_then(|n| a.nat_gateways.get(n)) {
        used.push_str(&format!(
            "<networkInterfaceId>eni-{}</networkInterfaceId><privateIpAddress>{}</privateIpAddress>",
            n.id.trim_start_matches("nat-"),
            n.private_ip
        ));
    }
    format!(
        "<item><publicIp>{}</publicIp><allocationId>{}</allocationId><domain>vpc</domain>{used}{}</item>",
        e.public_ip,
        e.allocation,
        tags_xml(&e.tags)
    )
}

/// End `allocation`'s association with an instance: the address leaves its
/// host, and the instance is back on its automatic public address.
fn unassociate(ctx: &Ctx, a: &mut Account, allocation: &str) {
    let Some(e) = a.addresses.get_mut(allocation) else {
        return;
    };
    e.association = None;
    let Some(id) = e.instance.take() else { return };
    let eip = e.public_ip.clone();
    let Some(i) = a.instances.get_mut(&id) else {
        return;
    };
    if let Some(host) = i.host {
        address_on(ctx, host, &eip, false);
    }
    i.public_ip = match (i.auto_public, i.host) {
        (true, Some(host)) => Some(ctx.cloud.bed.lock().unwrap().host(host).address.to_string()),
        _ => None,
    };
}

fn address(ctx: &Ctx, a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let allocation = f.get("AllocationId").cloned().unwrap_or_default();
    match action {
        "DescribeAddresses" => {
            match wanted(f, "AllocationId", &a.addresses).map_err(|id| no_allocation(&id)) {
                Ok(es) => {
                    let items: String = es.iter().map(|e| address_xml(a, e)).collect();
                    answer(action, &format!("<addressesSet>{items}</addressesSet>"))
                }
                Err(e) => e,
            }
        }
        "AllocateAddress" => {
            if f.get("Domain").is_some_and(|d| d != "vpc") {
                return error(
                    400,
                    "InvalidParameterValue",
                    "EC2-Classic is retired: the domain must be vpc",
                );
            }
            let Some(slot) = EipSlot::claim() else {
                return error(
                    400,
                    "AddressLimitExceeded",
                    "The maximum number of addresses has been reached.",
                );
            };
            let e = Address {
                allocation: format!("eipalloc-{:017x}", a.next()),
                public_ip: slot.address(2).to_string(),
                association: None,
                instance: None,
                nat: None,
                tags: tags_of(f, "elastic-ip"),
            };
            let xml = format!(
                "<publicIp>{}</publicIp><domain>vpc</domain><allocationId>{}</allocationId>",
                e.public_ip, e.allocation
            );
            a.slots.insert(e.allocation.clone(), slot);
            a.addresses.insert(e.allocation.clone(), e);
            answer(action, &xml)
        }
        "ReleaseAddress" => {
            let Some(e) = a.addresses.get(&allocation) else {
                return no_allocation(&allocation);
            };
            if e.association.is_some() {
                return error(400, "InvalidIPAddress.InUse", "Address is in use");
            }
            a.addresses.remove(&allocation);
            a.slots.remove(&allocation);
            answer(action, "<return>true</return>")
        }
        "AssociateAddress" => {
            let id = f.get("InstanceId").cloned().unwrap_or_default();
            let Some(e) = a.addresses.get(&allocation) else {
                return no_allocation(&allocation);
            };
            let Some(i) = a.instances.get(&id).filter(|i| i.state != "terminated") else {
                return no_instance(&id);
            };
            let (Some(host), "running" | "stopped") = (i.host, i.state.as_str()) else {
                return error(
                    400,
                    "IncorrectInstanceState",
                    &format!("The instance '{id}' is not in a valid state for this operation."),
                );
            };
            if e.instance.as_ref() == Some(&id) {
                let assoc = e.association.clone().unwrap_or_default();
                return answer(
                    action,
                    &format!("<return>true</return><associationId>{assoc}</associationId>"),
                );
            }
            // Moved from another instance unless the caller said not to
            // (automatic in VPC-only accounts); a NAT gateway's stays.
            if e.association.is_some()
                && f.get("AllowReassociation").map(String::as_str) == Some("false")
                || e.nat.is_some()
            {
                return error(
                    400,
                    "Resource.AlreadyAssociated",
                    &format!(
                        "resource {allocation} is already associated with associate-id {}",
                        e.association.clone().unwrap_or_default()
                    ),
                );
            }
            let vpc = a.vpc_of(i);
            if a.gateway_of(&vpc).is_none() {
                return error(
                    400,
                    "Gateway.NotAttached",
                    &format!("Network {vpc} is not attached to any internet gateway"),
                );
            }
            // Away from where it was, and the instance's own EIP off it.
            unassociate(ctx, a, &allocation);
            let before: Vec<String> = a
                .addresses
                .values()
                .filter(|e| e.instance.as_ref() == Some(&id))
                .map(|e| e.allocation.clone())
                .collect();
            for b in before {
                unassociate(ctx, a, &b);
            }
            let assoc = format!("eipassoc-{:017x}", a.next());
            let e = a.addresses.get_mut(&allocation).expect("checked");
            e.association = Some(assoc.clone());
            e.instance = Some(id.clone());
            let eip = e.public_ip.clone();
            address_on(ctx, host, &eip, true);
            a.instances.get_mut(&id).expect("checked").public_ip = Some(eip);
            answer(
                action,
                &format!("<return>true</return><associationId>{assoc}</associationId>"),
            )
        }
        _ => {
            let association = f.get("AssociationId").cloned().unwrap_or_default();
            let Some(e) = a
                .addresses
                .values()
                .find(|e| e.association.as_ref() == Some(&association))
            else {
                return no_association(&association);
            };
            if e.nat.is_some() {
                return error(
                    400,
                    "AuthFailure",
                    "You do not have permission to access the specified resource.",
                );
            }
            let allocation = e.allocation.clone();
            unassociate(ctx, a, &allocation);
            answer(action, "<return>true</return>")
        }
    }
}

fn nat_gateway_xml(n: &NatGateway) -> String {
    let failure = n
        .failure
        .as_ref()
        .map(|(code, message)| {
            format!(
                "<failureCode>{code}</failureCode><failureMessage>{}</failureMessage>",
                xml_escape(message)
            )
        })
        .unwrap_or_default();
    let status = match n.state.as_str() {
        "failed" => "failed",
        "deleting" | "deleted" => "disassociated",
        "pending" => "associating",
        _ => "succeeded",
    };
    format!(
        "<createTime>{}</createTime><natGatewayId>{}</natGatewayId><subnetId>{}</subnetId><vpcId>{}</vpcId><state>{}</state><connectivityType>public</connectivityType><natGatewayAddressSet><item><allocationId>{}</allocationId><networkInterfaceId>eni-{}</networkInterfaceId><privateIp>{}</privateIp><publicIp>{}</publicIp><isPrimary>true</isPrimary><status>{status}</status></item></natGatewayAddressSet>{failure}{}",
        n.created,
        n.id,
        n.subnet,
        n.vpc,
        n.state,
        n.allocation,
        n.id.trim_start_matches("nat-"),
        n.private_ip,
        n.public_ip,
        tags_xml(&n.tags)
    )
}

/// Free the address a NAT gateway held.
fn nat_lets_go(a: &mut Account, id: &str) {
    for e in a.addresses.values_mut() {
        if e.nat.as_deref() == Some(id) {
            e.nat = None;
            e.association = None;
        }
    }
}

fn nat_gateway(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    match action {
        "DescribeNatGateways" => {
            let ids = list(f, "NatGatewayId");
            if let Some(id) = ids.iter().find(|id| !a.nat_gateways.contains_key(*id)) {
                return no_nat_gateway(id);
            }
            let shown: Vec<String> = a
                .nat_gateways
                .keys()
                .filter(|k| ids.is_empty() || ids.contains(k))
                .cloned()
                .collect();
            let items: String = shown
                .iter()
                .map(|k| format!("<item>{}</item>", nat_gateway_xml(&a.nat_gateways[k])))
                .collect();
            // What EC2 does in the background, one describe later: a new
            // gateway comes up (or fails without an internet gateway), a
            // deleted one goes, freeing its address.
            for k in shown {
                let n = &a.nat_gateways[&k];
                let vpc = n.vpc.clone();
                match n.state.as_str() {
                    "pending" => {
                        let failure = a.gateway_of(&vpc).is_none().then(|| {
                            (
                                "Gateway.NotAttached".to_string(),
                                format!("Network {vpc} has no Internet gateway attached"),
                            )
                        });
                        let n = a.nat_gateways.get_mut(&k).expect("listed");
                        n.state = if failure.is_some() {
                            "failed"
                        } else {
                            "available"
                        }
                        .into();
                        if failure.is_some() {
                            n.failure = failure;
                            nat_lets_go(a, &k);
                        }
                    }
                    "deleting" => {
                        a.nat_gateways.get_mut(&k).expect("listed").state = "deleted".into();
                        nat_lets_go(a, &k);
                    }
                    _ => {}
                }
            }
            answer(action, &format!("<natGatewaySet>{items}</natGatewaySet>"))
        }
        "CreateNatGateway" => {
            let subnet = f.get("SubnetId").cloned().unwrap_or_default();
            let Some(s) = a.subnets.get(&subnet).cloned() else {
                return no_subnet(&subnet);
            };
            let Some(allocation) = f.get("AllocationId").cloned() else {
                return error(
                    400,
                    "MissingParameter",
                    "The request must contain the parameter AllocationId",
                );
            };
            let Some(e) = a.addresses.get(&allocation) else {
                return no_allocation(&allocation);
            };
            if e.association.is_some() {
                return error(
                    400,
                    "Resource.AlreadyAssociated",
                    &format!("Elastic IP address [{allocation}] is already associated"),
                );
            }
            let public_ip = e.public_ip.clone();
            let asked = f.get("PrivateIpAddress").cloned();
            if let Some(ip) = &asked {
                let inside = ip.parse::<Ipv4Addr>().is_ok_and(|p| in_cidr(p, &s.cidr));
                if !inside {
                    return error(
                        400,
                        "InvalidParameterValue",
                        &format!("Address {ip} does not fall within the subnet's address range"),
                    );
                }
                if a.ip_taken(&subnet, ip) {
                    return error(
                        400,
                        "InvalidIPAddress.InUse",
                        &format!("Address {ip} is in use."),
                    );
                }
            }
            let Some(private_ip) = asked.or_else(|| a.free_ip(&s)) else {
                return error(
                    400,
                    "InsufficientFreeAddressesInSubnet",
                    &format!("There are not enough free addresses in subnet '{subnet}'."),
                );
            };
            let n = a.next();
            let nat = NatGateway {
                id: format!("nat-{n:017x}"),
                vpc: s.vpc.clone(),
                subnet,
                state: "pending".into(),
                allocation: allocation.clone(),
                public_ip,
                private_ip,
                failure: None,
                created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                tags: tags_of(f, "natgateway"),
            };
            let e = a.addresses.get_mut(&allocation).expect("checked");
            e.nat = Some(nat.id.clone());
            e.association = Some(format!("eipassoc-{n:017x}"));
            let xml = nat_gateway_xml(&nat);
            a.nat_gateways.insert(nat.id.clone(), nat);
            answer(
                action,
                &format!(
                    "<clientToken>{}</clientToken><natGateway>{xml}</natGateway>",
                    f.get("ClientToken").map_or("", String::as_str)
                ),
            )
        }
        _ => {
            let id = f.get("NatGatewayId").cloned().unwrap_or_default();
            let Some(n) = a.nat_gateways.get_mut(&id).filter(|n| n.state != "deleted") else {
                return no_nat_gateway(&id);
            };
            if n.state != "deleting" {
                n.state = "deleting".into();
            }
            answer(action, &format!("<natGatewayId>{id}</natGatewayId>"))
        }
    }
}
