//! Amazon EC2's Query API (`Action=…&Version=2016-11-15`, form-encoded,
//! XML answers in the shapes `aws-sdk-ec2` parses), SigV4-checked like the
//! Lightsail emulator. It enforces what EC2 enforces and tidekeeper relies
//! on: a private IP inside its subnet's CIDR, an instance type changed only
//! on a stopped instance (`IncorrectInstanceState`), termination protection
//! (`OperationNotPermitted`). Instances here are records: they are not
//! backed by test hosts yet.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

#[allow(unused_imports)]
pub use super::lightsail::{ACCESS_KEY, REGION, SECRET_KEY};

pub const SUBNET: &str = "subnet-0a1b2c3d";
pub const SUBNET_CIDR: &str = "10.20.13.0/24";
pub const VPC: &str = "vpc-0a1b2c3d";
pub const AMI: &str = "ami-0abcdef1234567890";

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub image: String,
    pub state: String,
    pub subnet: String,
    pub private_ip: String,
    pub tags: Vec<(String, String)>,
    pub groups: Vec<String>,
    pub volume: String,
    pub protected: bool,
    pub imds_v2: bool,
}

#[derive(Default)]
pub struct Account {
    pub instances: BTreeMap<String, Instance>,
    next: u32,
}

#[derive(Clone)]
pub struct Ec2 {
    pub url: String,
    pub account: Arc<Mutex<Account>>,
}

impl Ec2 {
    pub fn start() -> Ec2 {
        let account = Arc::new(Mutex::new(Account::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(account.clone());
        let (url, _) = super::serve(app);
        Ec2 { url, account }
    }

    /// A running instance made before this test's tidekeeper ran, tagged `tags`.
    pub fn add_existing(
        &self,
        instance_type: &str,
        protected: bool,
        tags: &[(&str, &str)],
    ) -> String {
        let mut a = self.account.lock().unwrap();
        a.next += 1;
        let n = a.next;
        let i = Instance {
            id: format!("i-{n:017x}"),
            instance_type: instance_type.into(),
            image: AMI.into(),
            state: "running".into(),
            subnet: SUBNET.into(),
            private_ip: format!("10.20.13.{}", 10 + n),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            groups: Vec::new(),
            volume: format!("vol-{n:017x}"),
            protected,
            imds_v2: true,
        };
        let id = i.id.clone();
        a.instances.insert(id.clone(), i);
        id
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.account.lock().unwrap().instances.get(id).cloned()
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

fn instance_xml(i: &Instance) -> String {
    let tags: String = i
        .tags
        .iter()
        .map(|(k, v)| {
            format!(
                "<item><key>{}</key><value>{}</value></item>",
                xml_escape(k),
                xml_escape(v)
            )
        })
        .collect();
    let groups: String = i
        .groups
        .iter()
        .map(|g| format!("<item><groupId>{g}</groupId><groupName>{g}</groupName></item>"))
        .collect();
    format!(
        "<item><instanceId>{}</instanceId><imageId>{}</imageId><instanceState><code>{}</code><name>{}</name></instanceState><instanceType>{}</instanceType><placement><availabilityZone>{REGION}a</availabilityZone></placement><subnetId>{}</subnetId><vpcId>{VPC}</vpcId><privateIpAddress>{}</privateIpAddress><rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>{}</volumeId><status>attached</status></ebs></item></blockDeviceMapping><groupSet>{groups}</groupSet><tagSet>{tags}</tagSet><metadataOptions><httpTokens>{}</httpTokens></metadataOptions></item>",
        i.id,
        i.image,
        state_code(&i.state),
        i.state,
        i.instance_type,
        i.subnet,
        i.private_ip,
        i.volume,
        if i.imds_v2 { "required" } else { "optional" }
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

fn tags_of(f: &BTreeMap<String, String>, kind: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in 1.. {
        let Some(t) = f.get(&format!("TagSpecification.{n}.ResourceType")) else {
            break;
        };
        if t != kind {
            continue;
        }
        for m in 1.. {
            let Some(k) = f.get(&format!("TagSpecification.{n}.Tag.{m}.Key")) else {
                break;
            };
            let v = f
                .get(&format!("TagSpecification.{n}.Tag.{m}.Value"))
                .cloned()
                .unwrap_or_default();
            out.push((k.clone(), v));
        }
    }
    out
}

async fn handle(
    State(account): State<Arc<Mutex<Account>>>,
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
    let mut a = account.lock().unwrap();
    route(&mut a, &action, &f)
}

fn route(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    match action {
        "RunInstances" => run(a, f),
        "DescribeInstances" => {
            let ids = list(f, "InstanceId");
            // Asynchronous work on EC2's side finishes between two looks.
            for i in a.instances.values_mut() {
                i.state = match i.state.as_str() {
                    "pending" => "running",
                    "stopping" => "stopped",
                    "shutting-down" => "terminated",
                    s => s,
                }
                .into();
            }
            if let Some(id) = ids.iter().find(|id| !a.instances.contains_key(*id)) {
                return error(
                    400,
                    "InvalidInstanceID.NotFound",
                    &format!("The instance ID '{id}' does not exist"),
                );
            }
            let items: String = a
                .instances
                .values()
                .filter(|i| ids.is_empty() || ids.contains(&i.id))
                .map(instance_xml)
                .collect();
            answer(
                action,
                &format!(
                    "<reservationSet><item><reservationId>r-0001</reservationId><ownerId>123456789012</ownerId><instancesSet>{items}</instancesSet></item></reservationSet>"
                ),
            )
        }
        "StopInstances" | "StartInstances" | "TerminateInstances" => power(a, action, f),
        "ModifyInstanceAttribute" => modify(a, f),
        "DescribeInstanceAttribute" => {
            let id = f.get("InstanceId").cloned().unwrap_or_default();
            let Some(i) = a.instances.get(&id) else {
                return error(
                    400,
                    "InvalidInstanceID.NotFound",
                    &format!("The instance ID '{id}' does not exist"),
                );
            };
            answer(
                action,
                &format!(
                    "<instanceId>{id}</instanceId><disableApiTermination><value>{}</value></disableApiTermination>",
                    i.protected
                ),
            )
        }
        "DescribeSubnets" => answer(
            action,
            &format!(
                "<subnetSet><item><subnetId>{SUBNET}</subnetId><vpcId>{VPC}</vpcId><cidrBlock>{SUBNET_CIDR}</cidrBlock><availabilityZone>{REGION}a</availabilityZone></item></subnetSet>"
            ),
        ),
        "DescribeImages" => answer(
            action,
            &format!(
                "<imagesSet><item><imageId>{AMI}</imageId><rootDeviceName>/dev/xvda</rootDeviceName></item></imagesSet>"
            ),
        ),
        "DescribeSecurityGroups" => answer(action, "<securityGroupInfo></securityGroupInfo>"),
        _ => error(
            400,
            "InvalidAction",
            &format!("The action {action} is not valid for this web service."),
        ),
    }
}

fn run(a: &mut Account, f: &BTreeMap<String, String>) -> Response {
    let subnet = f.get("SubnetId").cloned().unwrap_or_else(|| SUBNET.into());
    if subnet != SUBNET {
        return error(
            400,
            "InvalidSubnetID.NotFound",
            &format!("The subnet ID '{subnet}' does not exist"),
        );
    }
    a.next += 1;
    let n = a.next;
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
    let i = Instance {
        id: format!("i-{n:017x}"),
        instance_type: f
            .get("InstanceType")
            .cloned()
            .unwrap_or_else(|| "m1.small".into()),
        image: f.get("ImageId").cloned().unwrap_or_default(),
        state: "pending".into(),
        subnet,
        private_ip: ip,
        tags: tags_of(f, "instance"),
        groups: list(f, "SecurityGroupId"),
        volume: format!("vol-{n:017x}"),
        protected: f.get("DisableApiTermination").map(String::as_str) == Some("true"),
        imds_v2: f.get("MetadataOptions.HttpTokens").map(String::as_str) == Some("required"),
    };
    let xml = instance_xml(&i);
    a.instances.insert(i.id.clone(), i);
    answer(
        "RunInstances",
        &format!(
            "<reservationId>r-{n:04}</reservationId><ownerId>123456789012</ownerId><instancesSet>{xml}</instancesSet>"
        ),
    )
}

fn power(a: &mut Account, action: &str, f: &BTreeMap<String, String>) -> Response {
    let ids = list(f, "InstanceId");
    let mut items = String::new();
    for id in &ids {
        let Some(i) = a.instances.get_mut(id) else {
            return error(
                400,
                "InvalidInstanceID.NotFound",
                &format!("The instance ID '{id}' does not exist"),
            );
        };
        let before = i.state.clone();
        let next = match action {
            "TerminateInstances" if i.protected => {
                return error(400, "OperationNotPermitted", &format!("The instance '{id}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again."));
            }
            "TerminateInstances" => "shutting-down",
            "StopInstances" if before == "running" || before == "pending" => "stopping",
            "StartInstances" if before == "stopped" => "pending",
            _ if matches!(before.as_str(), "stopped" | "running" | "stopping" | "pending") => before.as_str(),
            _ => {
                return error(400, "IncorrectInstanceState", &format!("The instance '{id}' is not in a state from which it can be {action}."));
            }
        }
        .to_string();
        i.state = next.clone();
        items.push_str(&format!("<item><instanceId>{id}</instanceId><currentState><code>{}</code><name>{next}</name></currentState><previousState><code>{}</code><name>{before}</name></previousState></item>", state_code(&next), state_code(&before)));
    }
    answer(action, &format!("<instancesSet>{items}</instancesSet>"))
}

fn modify(a: &mut Account, f: &BTreeMap<String, String>) -> Response {
    let id = f.get("InstanceId").cloned().unwrap_or_default();
    let Some(i) = a.instances.get_mut(&id) else {
        return error(
            400,
            "InvalidInstanceID.NotFound",
            &format!("The instance ID '{id}' does not exist"),
        );
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
    answer("ModifyInstanceAttribute", "<return>true</return>")
}
