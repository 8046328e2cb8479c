//! EC2 end to end through the real SDK client, against the EC2 emulator
//! whose instances are real test hosts: what EC2 enforces (subnet ranges,
//! a stop before a type change, termination protection, security groups)
//! reaches tidekeeper as EC2's own error codes or as what the host admits.

use std::time::Duration;

use tidekeeper_ec2 as ec2;

use crate::support::cloud::CloudFleet;
use crate::support::cloud::ec2::{
    ACCESS_KEY, AMI, DEBIAN_OWNER, Ec2, Image, REGION, SECRET_KEY, SUBNET, permission,
};
use crate::support::fleet::{stdout, text};
use crate::support::testbed::Kind;

pub(crate) fn client(e: &Ec2, rt: &tokio::runtime::Runtime) -> ec2::Client {
    rt.block_on(ec2::Client::new(ec2::Settings {
        region: Some(REGION.into()),
        auth: ec2::Auth::Keys {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            session_token: None,
        },
        endpoint: Some(e.url.clone()),
        timeout: Duration::from_secs(10),
        max_attempts: 1,
    }))
    .unwrap()
}

fn launch<'a>(ip: &'a str, tags: &'a [(String, String)]) -> ec2::Launch<'a> {
    ec2::Launch {
        instance_type: "t3.small",
        image: AMI,
        subnet: Some(SUBNET),
        private_ip: Some(ip),
        key_name: None,
        user_data: "#cloud-config\n",
        security_groups: &[],
        root_device: "/dev/xvda",
        root_gb: Some(20),
        root_type: Some("gp3"),
        termination_protection: true,
        tags,
    }
}

/// The emulators on a fleet of `hosts` whose tidekeeper.yaml (fleet `acme`)
/// names EC2 only.
fn fleet(files: &[(&str, &str)]) -> CloudFleet {
    let settings = format!(
        "fleet: acme\ndefaults:\n  ssh: {{from: [10.213.0.0/16]}}\nproviders:\n  ec2:\n    region: {REGION}\n"
    );
    let mut all = vec![("tidekeeper.yaml".to_string(), settings)];
    all.extend(files.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    CloudFleet::with_repo(Kind::Full, all)
}

/// Wait until `f` holds (the emulator's background work), up to 90 s.
#[track_caller]
pub(crate) fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_instance_is_created_resized_while_stopped_and_protected() {
    let f = fleet(&[]);
    let e = &f.ec2;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(e, &rt);
    let tags = vec![("Name".to_string(), "bastion".to_string())];
    let outside = rt
        .block_on(c.run(&launch("10.20.14.5", &tags)))
        .unwrap_err();
    assert_eq!(outside.code, "InvalidParameterValue", "{outside}");
    let id = rt.block_on(c.run(&launch("10.20.13.140", &tags))).unwrap();
    wait_for("the instance boots", || {
        e.instance(&id).unwrap().state == "running"
    });
    let i = rt.block_on(c.instance(&id)).unwrap().expect("listed");
    assert_eq!(
        (i.state.as_str(), i.instance_type.as_str()),
        ("running", "t3.small")
    );
    assert_eq!(i.private_ip.as_deref(), Some("10.20.13.140"));
    assert!(i.imds_v2, "IMDSv2 required");
    assert_eq!(i.tag("Name"), Some("bastion"));
    assert!(i.root_volume.is_some());
    // A real host, with its private address on its interface.
    let host = e.instance(&id).unwrap().host.expect("booted");
    let ns = f.cloud.bed.lock().unwrap().netns(host);
    let addrs = std::process::Command::new("ip")
        .args(["-n", &ns, "-4", "addr", "show", "dev", "ens5"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addrs.stdout).contains("10.20.13.140/24"),
        "{addrs:?}"
    );

    let running = rt.block_on(c.set_type(&id, "t3.medium")).unwrap_err();
    assert_eq!(running.code, "IncorrectInstanceState", "{running}");
    rt.block_on(c.stop(&id)).unwrap();
    wait_for("the instance stops", || {
        e.instance(&id).unwrap().state == "stopped"
    });
    rt.block_on(c.set_type(&id, "t3.medium")).unwrap();
    rt.block_on(c.start(&id)).unwrap();
    wait_for("the instance starts", || {
        e.instance(&id).unwrap().state == "running"
    });
    let i = rt.block_on(c.instance(&id)).unwrap().unwrap();
    assert_eq!(i.instance_type, "t3.medium");
    assert_eq!(
        e.instance(&id).unwrap().host,
        Some(host),
        "the same machine"
    );

    assert!(rt.block_on(c.termination_protection(&id)).unwrap());
    let refused = rt.block_on(c.terminate(&id)).unwrap_err();
    assert_eq!(refused.code, "OperationNotPermitted", "{refused}");
    rt.block_on(c.set_termination_protection(&id, false))
        .unwrap();
    rt.block_on(c.terminate(&id)).unwrap();
    wait_for("the instance is terminated", || {
        e.instance(&id).unwrap().state == "terminated"
    });
    assert!(
        rt.block_on(c.instances()).unwrap().is_empty(),
        "terminated instances are not listed"
    );
}

#[test]
fn a_wrong_secret_is_refused_by_the_signature_check() {
    let f = fleet(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt
        .block_on(ec2::Client::new(ec2::Settings {
            region: Some(REGION.into()),
            auth: ec2::Auth::Keys {
                access_key: ACCESS_KEY.into(),
                secret_key: "not-the-secret".into(),
                session_token: None,
            },
            endpoint: Some(f.ec2.url.clone()),
            timeout: Duration::from_secs(10),
            max_attempts: 1,
        }))
        .unwrap();
    let err = rt.block_on(c.instances()).unwrap_err();
    assert_eq!(err.code, "InvalidSignatureException", "{err}");
}

const BASE: &str = "files:\n  - path: /etc/tk-cloud\n    template: hello.j2\n";
const HELLO: &str = "hello {{ host.name }}\n";

const BASTION: &str = "provider: ec2
ssh: {user: admin, sudo: true}
server:
  type: t3.small
  image: ami-0abcdef1234567890
  subnet: subnet-0a1b2c3d
  private_ip: 10.20.13.140
  root_volume: {size_gb: 20}
  termination_protection: true
  firewall:
    - {port: \"22\", from: [10.213.0.0/16]}
roles: [base]
";

/// A Graviton type runs arm64 programs only: EC2 refuses to launch it
/// from an amd64 AMI, and the plan stops first, naming both, from the
/// architecture DescribeImages reports.
#[test]
fn an_arm64_type_on_an_amd64_image_is_refused_by_ec2_and_stopped_by_the_plan() {
    let graviton = BASTION.replace("type: t3.small", "type: t4g.small");
    let amd64 = graviton.replace(
        &format!("image: {AMI}"),
        "image: \"136693071363/debian-12-amd64-*\"",
    );
    assert_ne!(amd64, graviton);
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", &amd64),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&f.ec2, &rt);
    let refused = rt
        .block_on(c.run(&ec2::Launch {
            instance_type: "t4g.small",
            ..launch("10.20.13.141", &[])
        }))
        .unwrap_err();
    assert_eq!(refused.code, "InvalidParameterValue", "{refused}");
    assert!(
        refused.to_string().contains("architecture 'arm64'"),
        "{refused}"
    );

    let out = f.tk(&["plan"]);
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(
            "bastion: a t4g.small runs arm64 programs, but image debian-12-amd64-20261201-1 \
             (ami-0abcdef1234567890) is built for x86_64: choose an arm64 image"
        ),
        "{all}"
    );
    // Debian's arm64 AMIs: planned, with the one chosen.
    f.repo.write(
        "hosts/bastion.yaml",
        &amd64.replace("debian-12-amd64-*", "debian-12-arm64-*"),
    );
    f.repo.commit("arm64 images");
    let out = f.tk(&["plan"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("image: debian-12-arm64-20261201-1 (ami-0bbbb00000000002"),
        "{all}"
    );
    assert!(f.ec2.instances().is_empty(), "nothing launched");
}

#[test]
fn a_plan_prices_a_new_instance_from_the_dated_table_through_the_sdk() {
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", BASTION),
    ]);
    let out = f.tk(&["plan"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("bastion server (EC2, create)  +23.07 USD/month"),
        "{all}"
    );
    assert!(
        all.contains("prices: EC2 on-demand, prices of 2026-12"),
        "{all}"
    );
    assert!(all.contains("private ip: 10.20.13.140"), "{all}");
    assert!(
        all.contains("Monthly cost: 0.00 → 23.07 USD (+23.07)"),
        "{all}"
    );
    assert!(f.ec2.instances().is_empty(), "plan is read-only");
}

#[test]
fn a_protected_instance_whose_host_left_the_config_is_not_terminated() {
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", BASTION),
    ]);
    let id = f.ec2.add_existing(
        "t3.small",
        true,
        &[],
        &[
            ("managed-by", "tidekeeper"),
            ("tidekeeper-fleet", "acme"),
            ("tidekeeper-host", "old"),
            ("tidekeeper-allow-destroy", "true"),
        ],
    );
    let out = f.tk(&["plan", "--allow-destroy"]);
    let all = text(&out);
    assert!(all.contains("old server (EC2, delete)"), "{all}");
    assert!(
        all.contains(&format!("blocked: old server: it would be terminated, but EC2 termination protection is on for instance {id}")),
        "{all}"
    );
    assert_eq!(f.ec2.instance(&id).unwrap().state, "running", "{all}");
    // Applied, too: refused before anything is done, the instance kept.
    let out = f.tk(&["apply", "--yes", "--allow-destroy"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("EC2 termination protection is on"),
        "{}",
        text(&out)
    );
    assert_eq!(f.ec2.instance(&id).unwrap().state, "running");
    assert!(f.ec2.instance(&id).unwrap().protected);
}

#[test]
fn an_empty_account_gets_its_ec2_server_created_configured_and_resized_with_its_data() {
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", BASTION),
    ]);
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = stdout(&out);
    assert!(
        done.contains("bastion: host key generated by tidekeeper and verified"),
        "{done}"
    );
    assert_eq!(f.ssh("bastion", "cat /etc/tk-cloud"), "hello bastion\n");
    let inst = f.ec2.instance_for("bastion").expect("created");
    assert_eq!(inst.private_ip, "10.20.13.140");
    assert!(inst.protected, "termination protection on");
    assert_eq!(inst.tag("tidekeeper-fleet"), Some("acme"));
    let group = f.ec2.group_named("tk-acme-bastion").expect("its group");
    assert_eq!(inst.groups, std::slice::from_ref(&group.id));
    assert_eq!(group.ingress.len(), 1, "{:?}", group.ingress);
    assert_eq!(group.ingress[0].cidrs, ["10.213.0.0/16"]);
    // Debian's AMI lets the key in as admin only.
    let as_root = f
        .cloud
        .ssh_as(f.host_of("bastion"), &f.repo.key, "root", "id -u");
    assert_eq!(as_root.status.code(), Some(142), "{as_root:?}");
    // Port 80 is in no rule of its group: dropped, not refused.
    let addr = f
        .cloud
        .bed
        .lock()
        .unwrap()
        .host(f.host_of("bastion"))
        .address;
    let e = std::net::TcpStream::connect_timeout(&(addr, 80).into(), Duration::from_millis(500))
        .expect_err("port 80 is not admitted");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");

    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));

    let host = f.host_of("bastion");
    f.ssh("bastion", "echo kept > /root/data");
    f.repo.write(
        "hosts/bastion.yaml",
        &BASTION.replace("type: t3.small", "type: t3.medium"),
    );
    f.repo.commit("a bigger bastion");
    let out = f.tk(&["plan"]);
    let plan = stdout(&out);
    assert!(
        plan.contains("~ bastion server (EC2, resize)  23.07 → 40.59 USD/month (+17.52)"),
        "{plan}"
    );
    assert!(
        plan.contains("the instance is stopped, its type changed and it is started again; its EBS volumes and data are kept"),
        "{plan}"
    );
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let inst = f.ec2.instance_for("bastion").unwrap();
    assert_eq!(
        (inst.instance_type.as_str(), inst.state.as_str()),
        ("t3.medium", "running")
    );
    assert_eq!(
        f.host_of("bastion"),
        host,
        "the same instance, not a new one"
    );
    assert_eq!(f.ssh("bastion", "cat /root/data"), "kept\n");
}

/// `image: OWNER/NAME` takes the newest AMI that matches, shown in the plan
/// and pinned by it: a saved plan does not launch an image it did not show,
/// and a newer image later replaces nothing.
#[test]
fn an_image_filter_launches_the_newest_match_the_plan_showed_and_a_newer_one_replaces_nothing() {
    const FILTER: &str = "136693071363/debian-12-amd64-*";
    let filtered = BASTION.replace(&format!("image: {AMI}"), &format!("image: \"{FILTER}\""));
    assert_ne!(filtered, BASTION);
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        (
            "hosts/bastion.yaml",
            &filtered.replace("amd64-*", "riscv64-*"),
        ),
    ]);
    let out = f.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bastion: no available AMI of account 136693071363 is named like \"debian-12-riscv64-*\""),
        "{}",
        text(&out)
    );

    f.repo.write("hosts/bastion.yaml", &filtered);
    f.repo.commit("Debian 12 on amd64, the newest");
    let dir = crate::support::TempDir::new("ami-plan");
    let saved = dir.path().join("bastion.plan");
    let out = f.tk(&["plan", "--out", saved.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "image: debian-12-amd64-20261201-1 ({AMI}, {FILTER})"
        )),
        "the newest of the two Debian 12 amd64 images, not the arm64 one: {}",
        text(&out)
    );
    // Debian publishes a newer image before the saved plan is applied.
    let newer = "ami-0dddd00000000004";
    f.ec2.publish_image(Image::new(
        newer,
        "debian-12-amd64-20270101-1",
        DEBIAN_OWNER,
        "2027-01-01T10:00:00.000Z",
    ));
    let out = f.tk(&["apply", saved.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("the saved plan is stale; nothing was applied")
            && text(&out).contains("cloud: the server changes differ from the plan"),
        "{}",
        text(&out)
    );
    assert!(f.ec2.instances().is_empty(), "nothing launched");

    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("debian-12-amd64-20270101-1"),
        "{}",
        text(&out)
    );
    assert_eq!(f.ec2.instance_for("bastion").expect("created").image, newer);
    assert_eq!(f.ssh("bastion", "cat /etc/tk-cloud"), "hello bastion\n");

    // An even newer image: the instance stays as it is.
    f.ec2.publish_image(Image::new(
        "ami-0eeee00000000005",
        "debian-12-amd64-20270201-1",
        DEBIAN_OWNER,
        "2027-02-01T10:00:00.000Z",
    ));
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
}

const JOBS: &str = "jobs:
  - name: nightly-snap
    cron: \"0 3 * * *\"
    hosts: {names: [bastion]}
    snapshot: {keep: 2, labels: {kind: nightly}}
  - name: lights-out
    cron: \"0 0 1 1 *\"
    hosts: {names: [bastion]}
    power: {running_for: 1h}
  - name: office-hours
    cron: \"* * * * *\"
    hosts: {names: [bastion]}
    power: {running_for: 2h}
    health:
      - unit: ssh.service
";

/// A fixed "now" for the power schedules, outside `0 0 1 1 *` + 1 h.
const MIDSUMMER: &str = "2026-06-15T12:00:00Z";

#[test]
fn ebs_snapshots_keep_the_newest_and_a_power_schedule_stops_and_starts_the_instance() {
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", BASTION),
        ("schedules.yaml", JOBS),
    ]);
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let volume = f.ec2.instance_for("bastion").unwrap().volume;
    let mut first = None;
    for _ in 0..3 {
        let out = f.tk(&["schedule", "run", "nightly-snap"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        first = first.or_else(|| f.ec2.snapshots().first().map(|s| s.id.clone()));
    }
    let snaps = f.ec2.snapshots();
    assert_eq!(snaps.len(), 2, "keep 2 of 3: {snaps:?}");
    for s in &snaps {
        assert_eq!(s.volume, volume);
        assert_eq!(s.state, "completed");
        assert!(s.disk.is_some(), "a copy of the instance's disk");
        assert!(s.tags.contains(&("kind".into(), "nightly".into())), "{s:?}");
        assert!(
            s.tags
                .contains(&("tidekeeper-job".into(), "nightly-snap".into())),
            "{s:?}"
        );
    }
    // The first run's snapshot is the one deleted.
    let ids: Vec<&str> = snaps.iter().map(|s| s.id.as_str()).collect();
    assert!(!ids.contains(&first.unwrap().as_str()), "{ids:?}");

    // A stopped EC2 instance bills no compute: the saving is real.
    let out = crate::support::tidekeeper()
        .args(["schedule", "list", "--now", MIDSUMMER, "--repo"])
        .arg(&f.repo.path)
        .envs(crate::support::cloud::CREDENTIALS)
        .output()
        .unwrap();
    let list = text(&out);
    assert!(
        list.contains(
            "saving: 21.17 USD/month of 23.07 USD/month (storage is billed while stopped)"
        ),
        "{list}"
    );
    let host = f.host_of("bastion");
    let out = f.tk(&["schedule", "run", "lights-out", "--now", MIDSUMMER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.ec2.instance_for("bastion").unwrap().state, "stopped");
    let out = f.tk(&["schedule", "run", "office-hours", "--now", MIDSUMMER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.ec2.instance_for("bastion").unwrap().state, "running");
    assert_eq!(f.host_of("bastion"), host, "the same instance");
    assert_eq!(f.ssh("bastion", "cat /etc/tk-cloud"), "hello bastion\n");
}

/// Whether `port` of the host behind `name` answers (refused counts: the
/// packet got through) rather than being dropped on the way.
fn reaches(f: &CloudFleet, name: &str, port: u16) -> bool {
    let addr = f.cloud.bed.lock().unwrap().host(f.host_of(name)).address;
    match std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(500)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::TimedOut,
    }
}

/// `tidekeeper import ec2`: an instance made by hand, in a group made by
/// hand, is labelled the fleet's and its host file written as it is (type,
/// AMI, subnet, address, protection, the rules that reach it, the AMI's
/// login): the first plan changes nothing. Its firewall, once changed, is
/// the host's own group and the only one on the instance.
#[test]
fn an_instance_made_by_hand_is_imported_unchanged_and_its_firewall_then_becomes_the_hosts_own_group()
 {
    let f = fleet(&[("roles/base.yaml", BASE), ("templates/hello.j2", HELLO)]);
    let by_hand = f.ec2.add_group(
        "launch-wizard-1",
        vec![
            permission(22, "10.213.0.0/16"),
            permission(443, "0.0.0.0/0"),
        ],
    );
    let id = f.ec2.add_existing(
        "t3.small",
        true,
        &[&by_hand],
        &[("Name", "web-1"), ("team", "web")],
    );
    wait_for("the instance runs", || {
        f.ec2.instance(&id).is_some_and(|i| i.state == "running")
    });
    let import = |args: &[&str]| f.import(args);
    let out = import(&["ec2", "web-1", "--as", "web", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["format_version"], 1, "{doc}");
    assert_eq!(doc["file"], "hosts/web.yaml", "{doc}");
    assert_eq!(doc["id"], id.as_str(), "{doc}");
    assert_eq!(
        doc["host_file"].as_str(),
        Some(f.repo.read("hosts/web.yaml").as_str()),
        "{doc}"
    );
    let inst = f.ec2.instance(&id).unwrap();
    assert_eq!(inst.tag("tidekeeper-fleet"), Some("acme"));
    assert_eq!(inst.tag("tidekeeper-host"), Some("web"));
    assert_eq!(
        inst.groups,
        std::slice::from_ref(&by_hand),
        "import changes no group"
    );
    let file = f.repo.read("hosts/web.yaml");
    for want in [
        "provider: ec2\n",
        "  type: t3.small\n",
        &format!("  image: {AMI}\n"),
        &format!("  region: {REGION}\n"),
        &format!("  subnet: {SUBNET}\n"),
        &format!("  private_ip: {}\n", inst.private_ip),
        "  termination_protection: true\n",
        "    team: web\n",
        "    - port: \"22\"\n      from: [10.213.0.0/16]\n",
        "    - port: \"443\"\n      from: [0.0.0.0/0]\n",
        "ssh: {user: admin, sudo: true}",
    ] {
        assert!(file.contains(want), "{want:?} in:\n{file}");
    }
    let known = std::fs::read_to_string(&f.cloud.bed.lock().unwrap().known_hosts).unwrap();
    f.repo.write("known_hosts", &known);
    f.repo.commit("imported web");
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
    assert!(
        reaches(&f, "web", 443),
        "443 is admitted by the hand-made group"
    );

    // 443 closed in the host file: the host's own group is made with the
    // rules left and becomes the instance's only group.
    f.repo.write(
        "hosts/web.yaml",
        &file.replace("    - port: \"443\"\n      from: [0.0.0.0/0]\n", ""),
    );
    f.repo.commit("no HTTPS on web");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let own = f.ec2.group_named("tk-acme-web").expect("the host's group");
    assert_eq!(
        f.ec2.instance(&id).unwrap().groups,
        std::slice::from_ref(&own.id)
    );
    assert_eq!(own.ingress.len(), 1, "{:?}", own.ingress);
    assert!(!reaches(&f, "web", 443), "443 is dropped now");
    assert!(
        f.ec2.group_named("launch-wizard-1").is_some(),
        "the hand-made group is detached, not deleted"
    );
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
}

/// An instance adopted by its tags (not by import) whose host file declares
/// a firewall: one apply makes the host's group and attaches it in place of
/// the instance's own, and the plan after it is empty (it used to make the
/// group, leave it unattached, and plan the same change forever).
#[test]
fn a_firewall_change_on_an_adopted_instance_attaches_the_hosts_group() {
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", BASTION),
    ]);
    let by_hand = f.ec2.add_group("old-sg", vec![permission(22, "0.0.0.0/0")]);
    let id = f.ec2.add_existing(
        "t3.small",
        true,
        &[&by_hand],
        &[
            ("managed-by", "tidekeeper"),
            ("tidekeeper-fleet", "acme"),
            ("tidekeeper-host", "bastion"),
        ],
    );
    wait_for("the instance runs", || {
        f.ec2.instance(&id).is_some_and(|i| i.state == "running")
    });
    // Its address is the emulator's, not the one the file asks for at launch.
    let ip = f.ec2.instance(&id).unwrap().private_ip;
    f.repo
        .write("hosts/bastion.yaml", &BASTION.replace("10.20.13.140", &ip));
    let known = std::fs::read_to_string(&f.cloud.bed.lock().unwrap().known_hosts).unwrap();
    f.repo.write("known_hosts", &known);
    f.repo.commit("bastion at its address, its host key pinned");
    let plan = text(&f.tk(&["plan"]));
    assert!(plan.contains("security group"), "{plan}");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let own = f.ec2.group_named("tk-acme-bastion").expect("made");
    assert_eq!(
        f.ec2.instance(&id).unwrap().groups,
        std::slice::from_ref(&own.id)
    );
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));
}

/// The daemon runs the EC2 provider as `apply` does: a commit creates the
/// instance and configures it, the status carries its monthly cost, and a
/// later commit's new type is a stop, modify, start with the data kept.
#[test]
fn the_daemon_creates_an_ec2_server_from_a_commit_and_resizes_it_keeping_its_data() {
    use crate::support::daemon::Daemon;
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", BASTION),
    ]);
    let d = Daemon::start_env(
        &f.repo.path,
        &f.repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &crate::support::cloud::CREDENTIALS,
    );
    let head = crate::support::git(&f.repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&head, crate::support::cloud::SERVER_CREATE);
    let st = d.status();
    assert_eq!(st["hosts"]["bastion"]["state"], "synced", "{st}");
    assert_eq!(st["monthly_cost"]["USD"], 23.07, "{st}");
    assert_eq!(f.ssh("bastion", "cat /etc/tk-cloud"), "hello bastion\n");
    let inst = f.ec2.instance_for("bastion").expect("created");
    assert_eq!(inst.private_ip, "10.20.13.140");
    assert!(inst.protected, "termination protection on");
    let host = f.host_of("bastion");
    f.ssh("bastion", "echo kept > /root/data");

    f.repo.write(
        "hosts/bastion.yaml",
        &BASTION.replace("type: t3.small", "type: t3.medium"),
    );
    f.repo.commit("a bigger bastion");
    let head = crate::support::git(&f.repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&head, crate::support::cloud::SERVER_CREATE);
    let st = d.status();
    assert_eq!(st["hosts"]["bastion"]["state"], "synced", "{st}");
    assert_eq!(st["monthly_cost"]["USD"], 40.59, "{st}");
    let inst = f.ec2.instance_for("bastion").unwrap();
    assert_eq!(
        (inst.instance_type.as_str(), inst.state.as_str()),
        ("t3.medium", "running")
    );
    assert_eq!(f.host_of("bastion"), host, "the same instance");
    assert_eq!(f.ssh("bastion", "cat /root/data"), "kept\n");
}

/// `server.egress` makes the host's group's outbound rules exactly those
/// it names: EC2's allow-all is revoked, and the host reaches what they
/// allow and nothing else (the emulator filters the host's traffic out as
/// the group says). SSH in still works: replies always leave.
#[test]
fn outbound_rules_replace_ec2s_allow_all_and_bound_what_the_host_reaches() {
    // Two ports on this machine, the far end of the host's link.
    let open = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let shut = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let (open_port, shut_port) = (
        open.local_addr().unwrap().port(),
        shut.local_addr().unwrap().port(),
    );
    // DNS written as two rules and with addresses as people write them
    // (host bits, capitals): EC2 stores them merged and in its own form,
    // and the plan after the apply is still empty.
    let with_egress = |port: u16| {
        BASTION.replace(
            "roles: [base]\n",
            &format!(
                "  egress:\n    - {{port: \"{port}\", to: [10.213.0.0/16]}}\n    - {{port: \"53\", proto: udp, to: [10.213.0.7/16, \"2001:DB8:0::/32\"]}}\n    - {{port: \"53\", to: [10.213.0.0/16]}}\nroles: [base]\n"
            ),
        )
    };
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", &with_egress(open_port)),
    ]);
    let out = f.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let group = f.ec2.group_named("tk-acme-bastion").expect("its group");
    let mut rules: Vec<(String, i32, Vec<String>, Vec<String>)> = group
        .egress
        .iter()
        .map(|r| {
            (
                r.protocol.clone(),
                r.from,
                r.cidrs.clone(),
                r.ipv6_cidrs.clone(),
            )
        })
        .collect();
    rules.sort();
    let v4 = || vec!["10.213.0.0/16".to_string()];
    assert_eq!(
        rules,
        [
            ("tcp".into(), 53, v4(), vec![]),
            ("tcp".into(), i32::from(open_port), v4(), vec![]),
            ("udp".into(), 53, v4(), vec!["2001:db8::/32".to_string()]),
        ],
        "EC2's allow-all is gone"
    );
    let gateway = f
        .cloud
        .bed
        .lock()
        .unwrap()
        .controller_address(f.host_of("bastion"));
    let reach = |port: u16| {
        f.ssh(
            "bastion",
            &format!("timeout 3 bash -c 'echo > /dev/tcp/{gateway}/{port}' 2>/dev/null && echo reached || echo blocked"),
        )
    };
    assert_eq!(reach(open_port), "reached\n");
    assert_eq!(reach(shut_port), "blocked\n");
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "no changes: {}", text(&out));

    // Another port: the plan shows the outbound rules change, and the
    // apply swaps them.
    f.repo.write("hosts/bastion.yaml", &with_egress(shut_port));
    f.repo.commit("another outbound port");
    let out = f.tk(&["plan"]);
    let plan = stdout(&out);
    assert!(plan.contains("outbound rules:"), "{plan}");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(reach(shut_port), "reached\n");
    assert_eq!(reach(open_port), "blocked\n");
}

/// `settings` pointed at `f`'s EC2 emulator.
fn point(f: &CloudFleet, settings: &str) -> String {
    crate::support::cloud::point_ec2_at(settings, &f.ec2.url)
}

/// tidekeeper.yaml of fleet `acme` with a VPC network `lab`: a private
/// subnet for the bastion, a public one for the gate, `nat` as given.
fn lab_settings(nat: bool, allow_destroy: bool) -> String {
    format!(
        "fleet: acme\ndefaults:\n  ssh: {{from: [10.213.0.0/16]}}\nproviders:\n  ec2:\n    region: {REGION}\nnetworks:\n  lab:\n    provider: ec2\n    ip_range: 10.40.0.0/16\n    subnets: [10.40.13.0/24]\n    public_subnets: [10.40.0.0/24]\n    nat: {nat}\n    allow_destroy: {allow_destroy}\n"
    )
}

/// The gate: in the public subnet, SSH from this machine and the VPC.
const GATE: &str = "provider: ec2
ssh: {user: admin, sudo: true}
server:
  type: t3.small
  image: ami-0abcdef1234567890
  networks: [{name: lab, ip: 10.40.0.10}]
  firewall:
    - {port: \"22\", from: [10.213.0.0/16]}
roles: [base]
";

/// The bastion: in the private subnet at .140, reached through the gate.
const PRIVATE_BASTION: &str = "provider: ec2
ssh: {user: admin, sudo: true, address: private, via: gate}
server:
  type: t3.small
  image: ami-0abcdef1234567890
  networks: [{name: lab, ip: 10.40.13.140}]
  firewall:
    - {port: \"22\", from: [10.40.0.0/24]}
roles: [base]
";

#[test]
fn a_vpc_network_is_made_with_its_routes_and_nat_and_a_private_host_is_reached_through_the_public_one()
 {
    let files = |nat: bool, allow_destroy: bool| {
        vec![
            (
                "tidekeeper.yaml".to_string(),
                lab_settings(nat, allow_destroy),
            ),
            ("roles/base.yaml".to_string(), BASE.to_string()),
            ("templates/hello.j2".to_string(), HELLO.to_string()),
            ("hosts/gate.yaml".to_string(), GATE.to_string()),
            (
                "hosts/bastion.yaml".to_string(),
                PRIVATE_BASTION.to_string(),
            ),
        ]
    };
    let f = CloudFleet::with_repo(Kind::Full, files(true, false));
    // The plan prices the NAT gateway with its address (0.052 × 730 + 3.65),
    // and the bastion without one.
    let out = f.tk(&["plan"]);
    let plan = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for want in [
        "+ lab network (EC2)  +41.61 USD/month",
        "17.52 compute + 0.76 for 8 GB gp3 = 18.28 USD/month",
        "private subnets: 10.40.13.0/24",
        "public subnets: 10.40.0.0/24 (routed to an internet gateway)",
        "NAT gateway: in 10.40.0.0/24, the private subnets' way out",
        "subnet: 10.40.13.0/24 of the network",
        "private ip: 10.40.13.140",
    ] {
        assert!(plan.contains(want), "{want:?} in:\n{plan}");
    }
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The VPC as EC2 holds it.
    let tagged =
        |tags: &[(String, String)], k: &str, v: &str| tags.iter().any(|(a, b)| a == k && b == v);
    let vpc = f
        .ec2
        .vpcs()
        .into_iter()
        .find(|v| tagged(&v.tags, "tidekeeper-network", "lab"))
        .expect("the network's VPC");
    assert_eq!(vpc.cidr, "10.40.0.0/16");
    let subnet = |name: &str| f.ec2.subnet_named(name).expect(name);
    let (public, private) = (subnet("lab-public"), subnet("lab-private"));
    assert_eq!(
        (public.cidr.as_str(), public.map_public_ip),
        ("10.40.0.0/24", true)
    );
    assert_eq!(
        (private.cidr.as_str(), private.map_public_ip),
        ("10.40.13.0/24", false)
    );
    let igw = f
        .ec2
        .internet_gateways()
        .into_iter()
        .find(|g| g.vpcs == [vpc.id.clone()])
        .expect("an internet gateway on the VPC");
    let nat = f
        .ec2
        .nat_gateways()
        .into_iter()
        .find(|n| n.vpc == vpc.id && n.state == "available")
        .expect("an available NAT gateway");
    assert_eq!(
        nat.subnet, public.id,
        "the NAT gateway is in the public subnet"
    );
    assert_eq!(
        nat.private_ip, "10.40.0.254",
        "at the subnet's last address, clear of the hosts'"
    );
    let way_out = |subnet: &str| {
        f.ec2
            .route_tables()
            .into_iter()
            .find(|t| t.associations.iter().any(|(_, s)| s == subnet))
            .and_then(|t| t.routes.into_iter().find(|r| r.destination == "0.0.0.0/0"))
            .map(|r| r.target)
    };
    assert_eq!(way_out(&public.id), Some(igw.id.clone()));
    assert_eq!(way_out(&private.id), Some(nat.id.clone()));

    // Each instance in its subnet at its address; the bastion has no public
    // address and is configured through the gate over the VPC.
    let gate = f.ec2.instance_for("gate").expect("the gate");
    let bastion = f.ec2.instance_for("bastion").expect("the bastion");
    assert_eq!(
        (gate.subnet.as_str(), gate.private_ip.as_str()),
        (public.id.as_str(), "10.40.0.10")
    );
    assert!(gate.public_ip.is_some());
    assert_eq!(
        (bastion.subnet.as_str(), bastion.private_ip.as_str()),
        (private.id.as_str(), "10.40.13.140")
    );
    assert_eq!(
        bastion.public_ip, None,
        "a private subnet maps no public address"
    );
    assert_eq!(f.ssh("gate", "cat /etc/tk-cloud"), "hello gate\n");
    // (Its firewall admits only the public subnet: read from its disk.)
    let root = f.cloud.bed.lock().unwrap().root(f.host_of("bastion"));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/tk-cloud")).unwrap(),
        "hello bastion\n",
        "configured through the gate"
    );
    let read = f.ssh(
        "gate",
        "timeout 3 bash -c 'echo > /dev/tcp/10.40.13.140/22' && echo reached",
    );
    assert_eq!(
        read, "reached\n",
        "the gate reaches the bastion's sshd over the VPC"
    );
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "converged: {}", text(&out));

    // No NAT: the gateway goes, its address is released, the bill falls.
    f.repo
        .write("tidekeeper.yaml", &point(&f, &lab_settings(false, true)));
    f.repo.commit("no NAT gateway");
    let out = f.tk(&["plan"]);
    let plan = stdout(&out);
    assert!(
        plan.contains("~ lab network (EC2)  -41.61 USD/month"),
        "{plan}"
    );
    assert!(plan.contains("NAT gateway: present → none"), "{plan}");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !f.ec2
            .nat_gateways()
            .iter()
            .any(|n| n.vpc == vpc.id && n.state != "deleted"),
        "{:?}\n{}",
        f.ec2.nat_gateways(),
        text(&out)
    );
    assert!(
        f.ec2.addresses().is_empty(),
        "the NAT gateway's Elastic IP is released: {:?}",
        f.ec2.addresses()
    );
    assert_eq!(
        way_out(&private.id),
        None,
        "no way out left in the private table"
    );

    // The bastion and the network leave the config, the gate moves out (a
    // new instance): all of the network is deleted, in the order EC2 allows.
    std::fs::remove_file(f.repo.path.join("hosts/bastion.yaml")).unwrap();
    f.repo.write(
        "hosts/gate.yaml",
        &GATE.replace(
            "networks: [{name: lab, ip: 10.40.0.10}]",
            "subnet: subnet-0a1b2c3d",
        ),
    );
    f.repo.write(
        "tidekeeper.yaml",
        &point(
            &f,
            lab_settings(false, true).split("networks:").next().unwrap(),
        ),
    );
    f.repo.commit("the lab is gone");
    let out = f.tk(&["apply", "--yes", "--allow-destroy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        f.ec2.vpcs().iter().all(|v| v.id != vpc.id),
        "the VPC is deleted"
    );
    assert!(f.ec2.subnets().iter().all(|s| s.vpc != vpc.id));
    assert!(f.ec2.internet_gateways().iter().all(|g| g.id != igw.id));
    let gate = f.ec2.instance_for("gate").expect("the new gate");
    assert_eq!(gate.subnet, SUBNET);
    assert_eq!(f.ssh("gate", "cat /etc/tk-cloud"), "hello gate\n");
}

#[test]
fn an_elastic_ip_is_attached_in_place_kept_through_a_resize_and_released_with_the_host() {
    let plain = BASTION.replace("  termination_protection: true\n", "");
    let f = fleet(&[
        ("roles/base.yaml", BASE),
        ("templates/hello.j2", HELLO),
        ("hosts/bastion.yaml", &plain),
    ]);
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(f.ec2.addresses().is_empty());

    // static_ip: an Elastic IP of the host's own, attached in place; the
    // host is configured at it (the instance's public address now).
    let with_ip = plain.replace("  firewall:", "  static_ip: true\n  firewall:");
    f.repo.write("hosts/bastion.yaml", &with_ip);
    f.repo.commit("a fixed public address");
    let out = f.tk(&["plan"]);
    assert!(
        stdout(&out).contains("static ip: none → attached"),
        "{}",
        text(&out)
    );
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let eip = match f.ec2.addresses().as_slice() {
        [a] => a.clone(),
        other => panic!("one Elastic IP: {other:?}"),
    };
    let id = f.ec2.instance_for("bastion").unwrap().id;
    assert_eq!(eip.instance.as_deref(), Some(id.as_str()));
    assert!(
        eip.tags
            .contains(&("tidekeeper-host".to_string(), "bastion".to_string()))
    );
    assert_eq!(
        f.ec2.instance(&id).unwrap().public_ip.as_deref(),
        Some(eip.public_ip.as_str())
    );
    let banner = std::net::TcpStream::connect_timeout(
        &format!("{}:22", eip.public_ip).parse().unwrap(),
        Duration::from_secs(5),
    );
    assert!(
        banner.is_ok(),
        "the Elastic IP reaches the instance: {banner:?}"
    );
    let out = f.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "converged: {}", text(&out));

    // A new type: stopped, changed, started; the address stays.
    f.repo.write(
        "hosts/bastion.yaml",
        &with_ip.replace("t3.small", "t3.medium"),
    );
    f.repo.commit("bigger");
    let out = f.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let i = f.ec2.instance(&id).unwrap();
    assert_eq!(
        (i.instance_type.as_str(), i.public_ip.as_deref()),
        ("t3.medium", Some(eip.public_ip.as_str()))
    );
    assert_eq!(f.ssh("bastion", "cat /etc/tk-cloud"), "hello bastion\n");

    // The host leaves the config (another takes its place): its instance
    // and its address go.
    std::fs::remove_file(f.repo.path.join("hosts/bastion.yaml")).unwrap();
    f.repo.write(
        "hosts/gate.yaml",
        &plain.replace("private_ip: 10.20.13.140", "private_ip: 10.20.13.141"),
    );
    f.repo.commit("the gate replaces the bastion");
    let out = f.tk(&["apply", "--yes", "--allow-destroy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(f.ec2.instance(&id).unwrap().state, "terminated");
    assert!(
        f.ec2.addresses().is_empty(),
        "released: {:?}",
        f.ec2.addresses()
    );
}
