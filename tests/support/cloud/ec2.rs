//! Amazon EC2's Query API (`Action=…&Version=2016-11-15`, form-encoded,
//! XML answers in the shapes `aws-sdk-ec2` parses), SigV4-checked like the
//! Lightsail emulator.
//!
//! Instances are real test hosts (see [`super::Cloud`]), booted from the
//! user data and key pair tidekeeper sends, read as cloud-init reads them;
//! the AMI is Debian's, so the keys let `admin` in and root only hears
//! which user to log in as. It enforces what EC2 enforces: a private IP
//! inside its subnet's CIDR (on the host's `ens5`, as on EC2, so services
//! can bind to it), an instance type changed only on a stopped instance
//! (`IncorrectInstanceState`), termination protection
//! (`OperationNotPermitted`), a stop that keeps the disk, and security
//! groups: only what their ingress rules admit reaches the host from
//! outside (nftables in the host's network namespace; an instance in no
//! group is in the VPC's default group, which admits nobody from outside).
//! Every instance also gets a public address (the test host's own), as in a
//! subnet that maps public IPs on launch.

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

pub struct Account {
    pub instances: BTreeMap<String, Instance>,
    /// The AMIs DescribeImages knows and RunInstances launches.
    pub images: Vec<Image>,
    pub groups: BTreeMap<String, Group>,
    pub key_pairs: BTreeMap<String, String>,
    pub snapshots: BTreeMap<String, Snapshot>,
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
        Account {
            instances: BTreeMap::new(),
            images: catalogue(),
            groups: BTreeMap::from([(DEFAULT_GROUP.to_string(), default)]),
            key_pairs: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            next: 0,
        }
    }
}

impl Account {
    fn next(&mut self) -> u32 {
        self.next += 1;
        self.next
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
            let i = Instance {
                id: format!("i-{n:017x}"),
                instance_type: made.instance_type.into(),
                image: made.image.into(),
                state: "pending".into(),
                subnet: SUBNET.into(),
                private_ip: made
                    .private_ip
                    .map_or_else(|| format!("10.20.13.{}", 10 + n), str::to_string),
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
}

/// Boot the test host for instance `id` (blocking), give it the private
/// address on `ens5` (the primary network interface's name on EC2's Nitro
/// instances, so what a config binds to there works here), and mark it
/// running behind its security groups.
fn boot(ctx: &Ctx, id: &str, private_ip: &str, init: &super::super::testbed::CloudInit) {
    let (host, addr) = ctx.cloud.boot(init);
    let ns = ctx.cloud.bed.lock().unwrap().netns(host);
    let prefix = SUBNET_CIDR.split_once('/').unwrap().1;
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    if !std::process::Command::new("ip")
        .args(["-n", &ns, "link", "show", "ens5"])
        .output()
        .expect("ip")
        .status
        .success()
    {
        // A veth pair with both ends in the host: a link of its own that
        // carries the address (this kernel has no dummy links).
        ip(&[
            "link",
            "add",
            "ens5",
            "type",
            "veth",
            "peer",
            "name",
            "ens5-peer",
        ]);
    }
    ip(&[
        "addr",
        "replace",
        &format!("{private_ip}/{prefix}"),
        "dev",
        "ens5",
    ]);
    ip(&["link", "set", "ens5-peer", "up"]);
    ip(&["link", "set", "ens5", "up"]);
    if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(id) {
        i.host = Some(host);
        i.public_ip = Some(addr.to_string());
        i.booting = false;
    }
    enforce(ctx);
    if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(id) {
        i.state = "running".into();
    }
}

fn set_booting(ctx: &Ctx, id: &str, on: bool) {
    if let Some(i) = ctx.account.lock().unwrap().instances.get_mut(id) {
        i.booting = on;
    }
}

/// Every running instance's host admits only what its security groups'
/// ingress rules admit (as EC2 does in front of an instance).
fn enforce(ctx: &Ctx) {
    // Computed under the lock of what was applied: two requests never apply
    // their views of the account in the other order.
    super::enforce_firewalls(&ctx.cloud, &ctx.enforced, || {
        let a = ctx.account.lock().unwrap();
        a.instances
            .values()
            .filter(|i| !i.booting && i.state != "terminated" && i.state != "shutting-down")
            .filter_map(|i| {
                let host = i.host?;
                let groups: Vec<&String> = if i.groups.is_empty() {
                    vec![&a.groups[DEFAULT_GROUP].id]
                } else {
                    i.groups.iter().collect()
                };
                let of = |list: fn(&Group) -> &Vec<Permission>| -> Vec<PortRule> {
                    groups
                        .iter()
                        .filter_map(|g| a.groups.get(*g))
                        .flat_map(|g| list(g).iter())
                        .map(port_rule)
                        .collect()
                };
                let ingress = of(|g| &g.ingress);
                let egress = of(|g| &g.egress);
                // EC2's allow-all outbound rule: nothing to filter.
                let open_out = egress
                    .iter()
                    .any(|r| r.proto == "any" && r.from.iter().any(|c| c == "0.0.0.0/0"));
                let script = super::cloud_firewall_nft(Some(&ingress))
                    + &super::cloud_egress_nft((!open_out).then_some(&egress[..]));
                Some((host, script))
            })
            .collect()
    });
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
        "<item><instanceId>{}</instanceId><imageId>{}</imageId><instanceState><code>{}</code><name>{}</name></instanceState><instanceType>{}</instanceType><placement><availabilityZone>{REGION}a</availabilityZone></placement><subnetId>{}</subnetId><vpcId>{VPC}</vpcId><privateIpAddress>{}</privateIpAddress>{public}<rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>{}</volumeId><status>attached</status></ebs></item></blockDeviceMapping><groupSet>{groups}</groupSet>{}<metadataOptions><httpTokens>{}</httpTokens></metadataOptions></item>",
        i.id,
        i.image,
        state_code(&i.state),
        i.state,
        i.instance_type,
        i.subnet,
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
        "DescribeSubnets" => answer(
            action,
            &format!(
                "<subnetSet><item><subnetId>{SUBNET}</subnetId><vpcId>{VPC}</vpcId><cidrBlock>{SUBNET_CIDR}</cidrBlock><availabilityZone>{REGION}a</availabilityZone></item></subnetSet>"
            ),
        ),
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
    if subnet != SUBNET {
        return error(
            400,
            "InvalidSubnetID.NotFound",
            &format!("The subnet ID '{subnet}' does not exist"),
        );
    }
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
    let n = a.next();
    let ip = match f.get("PrivateIpAddress") {
        Some(ip) => {
            let ok = ip
                .parse::<Ipv4Addr>()
                .is_ok_and(|p| in_cidr(p, SUBNET_CIDR));
            if !ok {
                return error(
                    400,
                    "InvalidParameterValue",
                    &format!("Address {ip} does not fall within the subnet's address range"),
                );
            }
            if a.instances
                .values()
                .any(|i| i.private_ip == *ip && i.state != "terminated")
            {
                return error(
                    400,
                    "InvalidIPAddress.InUse",
                    &format!("Address {ip} is in use."),
                );
            }
            ip.clone()
        }
        None => format!("10.20.13.{}", 10 + n),
    };
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
            if a.groups.values().any(|g| g.name == name) {
                return error(
                    400,
                    "InvalidGroup.Duplicate",
                    &format!("The security group '{name}' already exists for VPC '{VPC}'"),
                );
            }
            let id = format!("sg-{:017x}", a.next());
            let g = Group {
                id: id.clone(),
                name,
                vpc: f.get("VpcId").cloned().unwrap_or_else(|| VPC.into()),
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
