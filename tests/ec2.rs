//! The EC2 client against the EC2 emulator, through the real SDK: what EC2
//! enforces (subnet ranges, a stop before a type change, termination
//! protection) reaches tidekeeper as EC2's own error codes.

use std::time::Duration;

use tidekeeper_ec2 as ec2;

use crate::support::cloud::ec2::{ACCESS_KEY, AMI, Ec2, REGION, SECRET_KEY, SUBNET};
use crate::support::fleet::{FleetRepo, text};

fn client(e: &Ec2, rt: &tokio::runtime::Runtime) -> ec2::Client {
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

#[test]
fn an_instance_is_created_resized_while_stopped_and_protected() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = Ec2::start();
    let c = client(&e, &rt);
    let tags = vec![("Name".to_string(), "bastion".to_string())];
    let outside = rt
        .block_on(c.run(&launch("10.20.14.5", &tags)))
        .unwrap_err();
    assert_eq!(outside.code, "InvalidParameterValue", "{outside}");
    let id = rt.block_on(c.run(&launch("10.20.13.140", &tags))).unwrap();
    let i = rt.block_on(c.instance(&id)).unwrap().expect("listed");
    assert_eq!(
        (i.state.as_str(), i.instance_type.as_str()),
        ("running", "t3.small")
    );
    assert_eq!(i.private_ip.as_deref(), Some("10.20.13.140"));
    assert!(i.imds_v2, "IMDSv2 required");
    assert_eq!(i.tag("Name"), Some("bastion"));
    assert!(i.root_volume.is_some());

    let running = rt.block_on(c.set_type(&id, "t3.medium")).unwrap_err();
    assert_eq!(running.code, "IncorrectInstanceState", "{running}");
    rt.block_on(c.stop(&id)).unwrap();
    assert_eq!(
        rt.block_on(c.instance(&id)).unwrap().unwrap().state,
        "stopped"
    );
    rt.block_on(c.set_type(&id, "t3.medium")).unwrap();
    rt.block_on(c.start(&id)).unwrap();
    let i = rt.block_on(c.instance(&id)).unwrap().unwrap();
    assert_eq!(
        (i.state.as_str(), i.instance_type.as_str()),
        ("running", "t3.medium")
    );

    assert!(rt.block_on(c.termination_protection(&id)).unwrap());
    let refused = rt.block_on(c.terminate(&id)).unwrap_err();
    assert_eq!(refused.code, "OperationNotPermitted", "{refused}");
    rt.block_on(c.set_termination_protection(&id, false))
        .unwrap();
    rt.block_on(c.terminate(&id)).unwrap();
    assert_eq!(e.instance(&id).unwrap().state, "shutting-down");
    assert!(
        rt.block_on(c.instances()).unwrap().is_empty(),
        "terminated instances are not listed"
    );
}

#[test]
fn a_wrong_secret_is_refused_by_the_signature_check() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = Ec2::start();
    let c = rt
        .block_on(ec2::Client::new(ec2::Settings {
            region: Some(REGION.into()),
            auth: ec2::Auth::Keys {
                access_key: ACCESS_KEY.into(),
                secret_key: "not-the-secret".into(),
                session_token: None,
            },
            endpoint: Some(e.url.clone()),
            timeout: Duration::from_secs(10),
            max_attempts: 1,
        }))
        .unwrap();
    let err = rt.block_on(c.instances()).unwrap_err();
    assert_eq!(err.code, "InvalidSignatureException", "{err}");
}

const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
];

fn repo(e: &Ec2, hosts: &[(&str, &str)]) -> (crate::support::TempDir, FleetRepo) {
    let dir = crate::support::TempDir::new("ec2-key");
    let settings = format!(
        "fleet: acme\ndefaults:\n  ssh: {{from: [10.20.0.0/16]}}\nproviders:\n  ec2:\n    region: {REGION}\n    endpoint: {}\n    timeout: 5s\n",
        e.url
    );
    let mut files = vec![("tidekeeper.yaml", settings.as_str())];
    files.extend_from_slice(hosts);
    let r = FleetRepo::with_files(dir.path().join("key"), &files);
    (dir, r)
}

const BASTION: &str = "provider: ec2
ssh: {user: admin, sudo: true, address: private}
server:
  type: t3.small
  image: ami-0abcdef1234567890
  subnet: subnet-0a1b2c3d
  private_ip: 10.20.13.140
  root_volume: {size_gb: 20}
  termination_protection: true
  firewall:
    - {port: \"22\", from: [10.20.0.0/16]}
";

#[test]
fn a_plan_prices_a_new_instance_from_the_dated_table_through_the_sdk() {
    let e = Ec2::start();
    let (_dir, r) = repo(&e, &[("hosts/bastion.yaml", BASTION)]);
    let out = r.tk_env(&["plan"], &CREDENTIALS);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("bastion server (EC2, create)  +17.52 USD/month"),
        "{all}"
    );
    assert!(
        all.contains("prices: EC2 on-demand, prices of 2026-12"),
        "{all}"
    );
    assert!(all.contains("private ip: 10.20.13.140"), "{all}");
    assert!(
        all.contains("Monthly cost: 0.00 → 17.52 USD (+17.52)"),
        "{all}"
    );
}

#[test]
fn a_protected_instance_whose_host_left_the_config_is_not_terminated() {
    let e = Ec2::start();
    let id = e.add_existing(
        "t3.small",
        true,
        &[
            ("managed-by", "tidekeeper"),
            ("tidekeeper-fleet", "acme"),
            ("tidekeeper-host", "old"),
            ("tidekeeper-allow-destroy", "true"),
        ],
    );
    let (_dir, r) = repo(&e, &[("hosts/bastion.yaml", BASTION)]);
    let out = r.tk_env(&["plan", "--allow-destroy"], &CREDENTIALS);
    let all = text(&out);
    assert!(all.contains("old server (EC2, delete)"), "{all}");
    assert!(
        all.contains(&format!("blocked: old server: it would be terminated, but EC2 termination protection is on for instance {id}")),
        "{all}"
    );
    assert_eq!(e.instance(&id).unwrap().state, "running", "{all}");
}
