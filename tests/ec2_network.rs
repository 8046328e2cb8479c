//! VPC networks as code through the real SDK client, against the EC2
//! emulator: what EC2 refuses comes back as its error codes, a VPC's
//! instances reach each other over their private addresses (and nobody
//! else's), only a public subnet's instances get a public address, and an
//! Elastic IP is an address a connection reaches the instance at.

use std::io::Read;
use std::time::Duration;

use tidekeeper_ec2 as ec2;

use crate::ec2::wait_for;
use crate::support::cloud::Cloud;
use crate::support::cloud::ec2::{AMI, Ec2, IGW, MAIN_ROUTE_TABLE, SUBNET, VPC, permission};

/// The EC2 emulator on a test fleet of its own (no other provider, no
/// repo), shut down with the test.
struct Net {
    cloud: Cloud,
    ec2: Ec2,
    rt: tokio::runtime::Runtime,
    c: ec2::Client,
}

impl Net {
    fn start() -> Net {
        let cloud = Cloud::new(0);
        let ec2 = Ec2::start(cloud.clone());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = crate::ec2::client(&ec2, &rt);
        Net { cloud, ec2, rt, c }
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// The error code EC2 answered `f` with (it must fail).
    #[track_caller]
    fn code<T: std::fmt::Debug>(
        &self,
        f: impl std::future::Future<Output = Result<T, ec2::Error>>,
    ) -> String {
        self.rt.block_on(f).expect_err("EC2 refuses it").code
    }

    /// Start an instance (`t3.small`, Debian) in `subnet`; its id.
    fn launch(
        &self,
        subnet: &str,
        ip: Option<&str>,
        groups: &[String],
        key: Option<&str>,
    ) -> String {
        self.run(self.c.run(&launch(subnet, ip, groups, key)))
            .unwrap()
    }

    #[track_caller]
    fn wait_running(&self, ids: &[&str]) {
        wait_for("the instances boot", || {
            ids.iter()
                .all(|id| self.ec2.instance(id).is_some_and(|i| i.state == "running"))
        });
    }
}

impl Drop for Net {
    /// The emulator's threads hold the fleet: it is shut down here.
    fn drop(&mut self) {
        self.cloud
            .bed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown();
    }
}

fn launch<'a>(
    subnet: &'a str,
    ip: Option<&'a str>,
    groups: &'a [String],
    key: Option<&'a str>,
) -> ec2::Launch<'a> {
    ec2::Launch {
        instance_type: "t3.small",
        image: AMI,
        subnet: Some(subnet),
        private_ip: ip,
        key_name: key,
        user_data: "#cloud-config\n",
        security_groups: groups,
        root_device: "/dev/xvda",
        root_gb: None,
        root_type: None,
        termination_protection: false,
        tags: &[],
    }
}

fn name(n: &str) -> Vec<(String, String)> {
    vec![("Name".to_string(), n.to_string())]
}

/// The first bytes sshd sends at `ip`, connecting from network namespace
/// `ns` (an instance's test host); empty when nothing answers within 4 s.
fn banner_from(ns: &str, ip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "4", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{ip}/22 && head -c 7 <&3"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first bytes sshd sends at `ip`, connecting from this machine (the
/// controller); None when no connection is made within 3 s.
fn banner(ip: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from((ip.parse::<std::net::Ipv4Addr>().unwrap(), 22));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A VPC with a public subnet (its own route table to an internet gateway,
/// a NAT gateway on an Elastic IP) and a private one (routed through the
/// NAT gateway): made, listed back as made, EC2's rules enforced along the
/// way, and torn down: out of order refused, in order done.
#[test]
fn a_vpc_with_public_and_private_subnets_is_built_listed_back_and_torn_down_in_order() {
    let n = Net::start();
    let c = &n.c;
    assert_eq!(n.code(c.create_vpc("10.0.0.0/8", &[])), "InvalidVpc.Range");
    assert_eq!(
        n.code(c.create_vpc("10.40.0.0/29", &[])),
        "InvalidVpc.Range"
    );
    let vpc = n.run(c.create_vpc("10.40.0.0/16", &name("lab"))).unwrap();

    // Subnets: inside the VPC's range, apart from each other.
    let public = n
        .run(c.create_subnet(&vpc, "10.40.1.0/24", Some("eu-central-1a"), &name("public")))
        .unwrap();
    let private = n
        .run(c.create_subnet(&vpc, "10.40.2.0/24", None, &name("private")))
        .unwrap();
    let refused = [
        n.code(c.create_subnet(&vpc, "10.41.0.0/24", None, &[])),
        n.code(c.create_subnet(&vpc, "10.40.1.128/25", None, &[])),
        n.code(c.create_subnet(&vpc, "10.40.3.0/29", None, &[])),
        n.code(c.create_subnet("vpc-0000000000000dead", "10.40.9.0/24", None, &[])),
    ];
    assert_eq!(
        refused,
        [
            "InvalidSubnet.Range",
            "InvalidSubnet.Conflict",
            "InvalidSubnet.Range",
            "InvalidVpcID.NotFound"
        ]
    );
    n.run(c.set_map_public_ip(&public, true)).unwrap();

    // The internet gateway: attached once, to this VPC only.
    let igw = n.run(c.create_internet_gateway(&name("lab"))).unwrap();
    n.run(c.attach_internet_gateway(&igw, &vpc)).unwrap();
    assert_eq!(
        n.code(c.attach_internet_gateway(&igw, &vpc)),
        "Resource.AlreadyAssociated"
    );
    assert_eq!(
        n.code(c.attach_internet_gateway(&igw, VPC)),
        "Resource.AlreadyAssociated"
    );

    // The public route table: 0.0.0.0/0 to the gateway, for the public subnet.
    let to_igw = ec2::RouteTarget::Gateway(igw.clone());
    let public_rt = n.run(c.create_route_table(&vpc, &name("public"))).unwrap();
    assert_eq!(
        n.code(c.create_route(
            &public_rt,
            "0.0.0.0/0",
            &ec2::RouteTarget::Gateway(IGW.into())
        )),
        "InvalidParameterValue",
        "another VPC's gateway"
    );
    n.run(c.create_route(&public_rt, "0.0.0.0/0", &to_igw))
        .unwrap();
    assert_eq!(
        n.code(c.create_route(&public_rt, "0.0.0.0/0", &to_igw)),
        "RouteAlreadyExists"
    );
    let public_assoc = n.run(c.associate_route_table(&public_rt, &public)).unwrap();
    assert_eq!(
        n.code(c.associate_route_table(&public_rt, &public)),
        "Resource.AlreadyAssociated"
    );
    assert_eq!(
        n.code(c.associate_route_table(MAIN_ROUTE_TABLE, &private)),
        "InvalidParameterValue",
        "another VPC's table"
    );

    // The NAT gateway, on an Elastic IP, in the public subnet.
    let eip = n.run(c.allocate_address(&name("nat"))).unwrap();
    let nat = n
        .run(c.create_nat_gateway(&public, &eip.allocation, None, &name("lab")))
        .unwrap();
    assert_eq!(
        n.code(c.create_nat_gateway(&public, &eip.allocation, None, &[])),
        "Resource.AlreadyAssociated",
        "its address is taken"
    );
    let nats = n.run(c.nat_gateways()).unwrap();
    let made = nats.iter().find(|g| g.id == nat).expect("listed");
    assert_eq!(made.state, "pending");
    wait_for("the NAT gateway is available", || {
        n.run(c.nat_gateways())
            .unwrap()
            .iter()
            .any(|g| g.id == nat && g.state == "available")
    });

    // The private route table: 0.0.0.0/0 through the NAT gateway.
    let to_nat = ec2::RouteTarget::NatGateway(nat.clone());
    let private_rt = n.run(c.create_route_table(&vpc, &name("private"))).unwrap();
    n.run(c.create_route(&private_rt, "0.0.0.0/0", &to_nat))
        .unwrap();
    let private_assoc = n
        .run(c.associate_route_table(&private_rt, &private))
        .unwrap();
    assert_eq!(
        n.code(c.replace_route(&private_rt, "10.99.0.0/16", &to_nat)),
        "InvalidParameterValue",
        "EC2: no route for it, use CreateRoute"
    );
    assert_eq!(
        n.code(c.delete_route(&private_rt, "10.99.0.0/16")),
        "InvalidRoute.NotFound"
    );
    // Replaced and put back: the same route, another target for a while.
    n.run(c.replace_route(&private_rt, "0.0.0.0/0", &to_igw))
        .unwrap();
    n.run(c.replace_route(&private_rt, "0.0.0.0/0", &to_nat))
        .unwrap();

    // Everything listed back as made.
    let v = n.run(c.vpcs()).unwrap();
    let v = v.iter().find(|v| v.id == vpc).expect("the VPC");
    assert_eq!(
        (v.cidr.as_str(), v.tags.clone()),
        ("10.40.0.0/16", name("lab"))
    );
    let subnets = n.run(c.subnets()).unwrap();
    let of_vpc: Vec<_> = subnets.iter().filter(|s| s.vpc == vpc).collect();
    assert_eq!(of_vpc.len(), 2, "{subnets:?}");
    let p = of_vpc.iter().find(|s| s.id == public).unwrap();
    assert_eq!(
        (
            p.cidr.as_str(),
            p.zone.as_str(),
            p.map_public_ip,
            p.tags.clone()
        ),
        ("10.40.1.0/24", "eu-central-1a", true, name("public"))
    );
    let q = of_vpc.iter().find(|s| s.id == private).unwrap();
    assert_eq!(
        (q.cidr.as_str(), q.map_public_ip, q.tags.clone()),
        ("10.40.2.0/24", false, name("private"))
    );
    assert!(
        subnets.iter().any(|s| s.id == SUBNET && s.map_public_ip),
        "the account's first subnet is public: {subnets:?}"
    );
    let igws = n.run(c.internet_gateways()).unwrap();
    let g = igws.iter().find(|g| g.id == igw).expect("the gateway");
    assert_eq!(
        (g.vpcs.clone(), g.tags.clone()),
        (vec![vpc.clone()], name("lab"))
    );
    let tables = n.run(c.route_tables()).unwrap();
    let of_vpc: Vec<_> = tables.iter().filter(|t| t.vpc == vpc).collect();
    assert_eq!(of_vpc.len(), 3, "main, public, private: {tables:?}");
    let main = of_vpc.iter().find(|t| t.main).expect("a main table");
    let routes = |t: &ec2::RouteTable| -> Vec<(String, ec2::RouteTarget)> {
        t.routes
            .iter()
            .map(|r| (r.destination.clone(), r.target.clone()))
            .collect()
    };
    let local = (
        "10.40.0.0/16".to_string(),
        ec2::RouteTarget::Gateway("local".into()),
    );
    assert_eq!(routes(main), std::slice::from_ref(&local));
    assert!(main.subnets.is_empty());
    let p = of_vpc.iter().find(|t| t.id == public_rt).unwrap();
    assert!(!p.main);
    assert_eq!(
        routes(p),
        [local.clone(), ("0.0.0.0/0".to_string(), to_igw.clone())]
    );
    assert_eq!(p.subnets, [(public_assoc.clone(), public.clone())]);
    assert_eq!(p.tags, name("public"));
    let q = of_vpc.iter().find(|t| t.id == private_rt).unwrap();
    assert_eq!(
        routes(q),
        [local.clone(), ("0.0.0.0/0".to_string(), to_nat.clone())]
    );
    assert_eq!(q.subnets, [(private_assoc.clone(), private.clone())]);
    let nats = n.run(c.nat_gateways()).unwrap();
    let g = nats.iter().find(|g| g.id == nat).unwrap();
    assert_eq!(
        (
            g.vpc.as_str(),
            g.subnet.as_str(),
            g.allocation.as_deref(),
            g.public_ip.as_deref(),
            g.tags.clone()
        ),
        (
            vpc.as_str(),
            public.as_str(),
            Some(eip.allocation.as_str()),
            Some(eip.public_ip.as_str()),
            name("lab")
        )
    );
    let addresses = n.run(c.addresses()).unwrap();
    let a = addresses
        .iter()
        .find(|a| a.allocation == eip.allocation)
        .unwrap();
    assert!(
        a.association.is_some() && a.instance.is_none(),
        "held by the NAT gateway: {a:?}"
    );
    assert_eq!(
        (a.public_ip.as_str(), a.tags.clone()),
        (eip.public_ip.as_str(), name("nat"))
    );

    // Out of order: each refused while something depends on it.
    let refused = [
        n.code(c.delete_vpc(&vpc)),
        n.code(c.delete_subnet(&public)),
        n.code(c.delete_internet_gateway(&igw)),
        n.code(c.detach_internet_gateway(&igw, &vpc)),
        n.code(c.release_address(&eip.allocation)),
        n.code(c.delete_route_table(&public_rt)),
        n.code(c.delete_route_table(&main.id)),
    ];
    assert_eq!(
        refused,
        [
            "DependencyViolation",
            "DependencyViolation",
            "DependencyViolation",
            "DependencyViolation",
            "InvalidIPAddress.InUse",
            "DependencyViolation",
            "DependencyViolation",
        ]
    );

    // In order: the NAT gateway (its address freed once it is deleted),
    // the address, the tables, the subnets, the gateway, the VPC.
    n.run(c.delete_nat_gateway(&nat)).unwrap();
    wait_for("the NAT gateway is deleted", || {
        !n.run(c.nat_gateways()).unwrap().iter().any(|g| g.id == nat)
    });
    n.run(c.release_address(&eip.allocation)).unwrap();
    for (table, assoc) in [(&public_rt, &public_assoc), (&private_rt, &private_assoc)] {
        n.run(c.disassociate_route_table(assoc)).unwrap();
        n.run(c.delete_route_table(table)).unwrap();
    }
    n.run(c.delete_subnet(&public)).unwrap();
    n.run(c.delete_subnet(&private)).unwrap();
    assert_eq!(
        n.code(c.delete_vpc(&vpc)),
        "DependencyViolation",
        "the gateway"
    );
    n.run(c.detach_internet_gateway(&igw, &vpc)).unwrap();
    n.run(c.delete_internet_gateway(&igw)).unwrap();
    n.run(c.delete_vpc(&vpc)).unwrap();
    assert!(!n.run(c.vpcs()).unwrap().iter().any(|v| v.id == vpc));
    assert!(
        !n.run(c.route_tables())
            .unwrap()
            .iter()
            .any(|t| t.vpc == vpc),
        "its main table went with it"
    );
    assert!(n.run(c.addresses()).unwrap().is_empty());

    // A NAT gateway in a VPC without an internet gateway fails, as EC2's
    // does, and gives its address back.
    let closed = n.run(c.create_vpc("10.50.0.0/16", &[])).unwrap();
    let s = n
        .run(c.create_subnet(&closed, "10.50.0.0/24", None, &[]))
        .unwrap();
    let eip = n.run(c.allocate_address(&[])).unwrap();
    let nat = n
        .run(c.create_nat_gateway(&s, &eip.allocation, None, &[]))
        .unwrap();
    let mut failed = None;
    wait_for("the NAT gateway fails", || {
        failed = n
            .run(c.nat_gateways())
            .unwrap()
            .into_iter()
            .find(|g| g.id == nat && g.state == "failed");
        failed.is_some()
    });
    let failure = failed.unwrap().failure.unwrap_or_default();
    assert!(
        failure.contains("no Internet gateway attached"),
        "{failure}"
    );
    n.run(c.release_address(&eip.allocation)).unwrap();
}

/// Instances of one VPC reach each other over their private addresses, as
/// their security groups allow (a jump host in the public subnet logs in
/// to one in the private subnet); only the public subnet's instance has a
/// public address; an instance of another VPC, even of the same range,
/// reaches nothing there.
#[test]
fn instances_of_a_vpc_reach_each_other_privately_and_another_vpcs_do_not() {
    let n = Net::start();
    let c = &n.c;
    let key = n.cloud.bed.lock().unwrap().public_key.clone();
    n.run(c.import_key_pair("bed", &key, &[])).unwrap();
    let vpc = n.run(c.create_vpc("10.20.0.0/16", &name("app"))).unwrap();
    let public = n
        .run(c.create_subnet(&vpc, "10.20.1.0/24", None, &name("public")))
        .unwrap();
    n.run(c.set_map_public_ip(&public, true)).unwrap();
    let private = n
        .run(c.create_subnet(&vpc, "10.20.13.0/24", None, &name("private")))
        .unwrap();
    let igw = n.run(c.create_internet_gateway(&[])).unwrap();
    n.run(c.attach_internet_gateway(&igw, &vpc)).unwrap();
    // SSH to the private instance from inside the VPC only.
    let inside = n
        .run(c.create_security_group("inside", "SSH from the VPC", &vpc, &[]))
        .unwrap();
    let ssh_in = vec![ec2::Rule {
        protocol: "tcp".into(),
        from: 22,
        to: 22,
        cidrs: vec!["10.20.0.0/16".into()],
        ipv6_cidrs: vec![],
    }];
    n.run(c.authorize_ingress(&inside, &ssh_in)).unwrap();
    // Another VPC of the same range, not connected to this one.
    let other = n.run(c.create_vpc("10.20.0.0/16", &name("other"))).unwrap();
    let elsewhere = n
        .run(c.create_subnet(&other, "10.20.13.0/24", None, &[]))
        .unwrap();

    // What RunInstances refuses: no such subnet, an address outside the
    // subnet or one AWS reserves.
    let refused = [
        n.code(c.run(&launch("subnet-0000000000000dead", None, &[], None))),
        n.code(c.run(&launch(&private, Some("10.20.1.10"), &[], None))),
        n.code(c.run(&launch(&private, Some("10.20.13.1"), &[], None))),
        n.code(c.run(&launch(&private, Some("10.20.13.255"), &[], None))),
    ];
    assert_eq!(
        refused,
        [
            "InvalidSubnetID.NotFound",
            "InvalidParameterValue",
            "InvalidParameterValue",
            "InvalidParameterValue",
        ]
    );

    let jump = n.launch(&public, None, &[], None);
    let groups = std::slice::from_ref(&inside);
    let db = n.launch(&private, Some("10.20.13.140"), groups, Some("bed"));
    let stranger = n.launch(&elsewhere, Some("10.20.13.150"), &[], None);
    assert_eq!(
        n.code(c.run(&launch(&private, Some("10.20.13.140"), &[], None))),
        "InvalidIPAddress.InUse"
    );
    n.wait_running(&[&jump, &db, &stranger]);

    let i = |id: &str| n.run(c.instance(id)).unwrap().expect("listed");
    let (j, d, s) = (i(&jump), i(&db), i(&stranger));
    assert_eq!(
        j.private_ip.as_deref(),
        Some("10.20.1.4"),
        "the first free address"
    );
    let jump_host = n.ec2.instance(&jump).unwrap().host.unwrap();
    let jump_address = n
        .cloud
        .bed
        .lock()
        .unwrap()
        .host(jump_host)
        .address
        .to_string();
    assert_eq!(j.public_ip, Some(jump_address), "a public subnet's");
    assert_eq!((d.public_ip, s.public_ip), (None, None), "private subnets'");
    assert_eq!(d.subnet.as_deref(), Some(private.as_str()));

    // From the jump host: the private instance's sshd, over its private
    // address, and a login with the key it was launched with.
    let jump_ns = n.ec2.netns_of(&jump).unwrap();
    assert_eq!(banner_from(&jump_ns, "10.20.13.140"), "SSH-2.0");
    let bed_key = n.cloud.bed.lock().unwrap().key.clone();
    let login = std::process::Command::new("ip")
        .args(["netns", "exec", &jump_ns, "ssh", "-i"])
        .arg(&bed_key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
        .args(["admin@10.20.13.140", "ip -4 -o addr show dev ens5"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&login.stdout).contains("10.20.13.140/24"),
        "{login:?}"
    );
    // From the other VPC: the same address leads nowhere.
    let stranger_ns = n.ec2.netns_of(&stranger).unwrap();
    assert_eq!(banner_from(&stranger_ns, "10.20.13.140"), "");
    // The group decides inside the VPC too: without its rule, dropped.
    n.run(c.revoke_ingress(&inside, &ssh_in)).unwrap();
    assert_eq!(banner_from(&jump_ns, "10.20.13.140"), "");
    n.run(c.authorize_ingress(&inside, &ssh_in)).unwrap();
    assert_eq!(banner_from(&jump_ns, "10.20.13.140"), "SSH-2.0");

    // An Elastic IP needs an internet gateway on the instance's VPC.
    let eip = n.run(c.allocate_address(&[])).unwrap();
    assert_eq!(
        n.code(c.associate_address(&eip.allocation, &stranger)),
        "Gateway.NotAttached"
    );
    n.run(c.release_address(&eip.allocation)).unwrap();
    // A subnet with an instance in it stays; a VPC with subnets too.
    assert_eq!(n.code(c.delete_subnet(&private)), "DependencyViolation");
    assert_eq!(n.code(c.delete_vpc(&other)), "DependencyViolation");
}

/// An Elastic IP associated with an instance is its public address, and a
/// connection from the controller to it reaches the instance's sshd; once
/// disassociated it reaches nothing, and the instance is back on an
/// automatic public address.
#[test]
fn an_elastic_ip_reaches_its_instance_until_it_is_disassociated() {
    let n = Net::start();
    let c = &n.c;
    let ssh = n
        .ec2
        .add_group("ssh", vec![permission(22, "10.213.0.0/16")]);
    let id = n.launch(SUBNET, None, &[ssh], None);
    let eip = n.run(c.allocate_address(&name("web"))).unwrap();
    assert!(
        eip.public_ip.starts_with("10.213."),
        "an address of the test network: {eip:?}"
    );
    assert_eq!(
        n.code(c.associate_address(&eip.allocation, &id)),
        "IncorrectInstanceState",
        "still booting"
    );
    n.wait_running(&[&id]);
    let host = n.ec2.instance(&id).unwrap().host.unwrap();
    let own = n.cloud.bed.lock().unwrap().host(host).address.to_string();
    assert_eq!(
        n.run(c.instance(&id))
            .unwrap()
            .unwrap()
            .public_ip
            .as_deref(),
        Some(own.as_str())
    );
    assert_eq!(banner(&eip.public_ip), None, "not associated yet");

    let assoc = n.run(c.associate_address(&eip.allocation, &id)).unwrap();
    let i = n.run(c.instance(&id)).unwrap().unwrap();
    assert_eq!(i.public_ip.as_deref(), Some(eip.public_ip.as_str()));
    let listed = n.run(c.addresses()).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].association.as_deref(),
            listed[0].instance.as_deref()
        ),
        (Some(assoc.as_str()), Some(id.as_str()))
    );
    assert_eq!(banner(&eip.public_ip).as_deref(), Some("SSH-2.0"));
    assert_eq!(
        n.code(c.release_address(&eip.allocation)),
        "InvalidIPAddress.InUse"
    );

    n.run(c.disassociate_address(&assoc)).unwrap();
    assert_eq!(
        banner(&eip.public_ip),
        None,
        "the address left the instance"
    );
    let i = n.run(c.instance(&id)).unwrap().unwrap();
    assert_eq!(
        i.public_ip.as_deref(),
        Some(own.as_str()),
        "automatic again"
    );
    assert_eq!(banner(&own).as_deref(), Some("SSH-2.0"));
    assert_eq!(
        n.code(c.disassociate_address(&assoc)),
        "InvalidAssociationID.NotFound"
    );
    n.run(c.release_address(&eip.allocation)).unwrap();
    assert!(n.run(c.addresses()).unwrap().is_empty());
}
