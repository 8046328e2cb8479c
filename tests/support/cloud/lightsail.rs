//! A stateful emulator of the AWS Lightsail API subset tidekeeper uses, in
//! its wire protocol: `POST /` with `X-Amz-Target: Lightsail_20161128.<Op>`,
//! awsJson1.1 bodies, SigV4 `Authorization` (the signature recomputed and
//! checked, session tokens included), errors as `{"__type", "message"}`, operations that run
//! asynchronously, and throttling answered with `x-amz-retry-after`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Cloud, Fault, Faults, cloud_init};

pub const ACCESS_KEY: &str = "AKIDTIDEKEEPERTEST";
pub const SECRET_KEY: &str = "lightsail-test-secret";
pub const REGION: &str = "eu-central-1";

/// Bundles: (id, USD/month, cpus, RAM GB, disk GB).
pub const BUNDLES: &[(&str, f64, i32, f64, i32)] = &[
    ("nano_3_0", 5.0, 2, 0.5, 20),
    ("micro_3_0", 7.0, 2, 1.0, 40),
    ("small_3_0", 12.0, 2, 2.0, 60),
    ("medium_3_0", 24.0, 2, 4.0, 80),
    ("large_3_0", 44.0, 2, 8.0, 160),
    ("xlarge_3_0", 84.0, 4, 16.0, 320),
];

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub bundle: String,
    pub blueprint: String,
    pub zone: String,
    pub state: String,
    pub tags: Vec<(String, String)>,
    pub public_ip: Option<String>,
    pub static_ip: bool,
    pub ports: Vec<Value>,
    pub created: f64,
    pub host: Option<usize>,
    /// What the instance was launched with (its metadata service serves it).
    pub user_data: String,
}

#[derive(Debug, Clone)]
struct Operation {
    id: String,
    resource: String,
    kind: String,
    ready_at: Instant,
    done: Arc<Mutex<bool>>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub instance: String,
    pub tags: Vec<(String, String)>,
    pub created: f64,
    /// `pending` while the disk is copied, then `available`.
    pub state: String,
    pub bundle: String,
    pub blueprint: String,
    /// The instance's disk as it was (instances without a test host have none).
    pub disk: Option<std::path::PathBuf>,
}

/// The disk size of `bundle` in GB.
fn disk_gb(bundle: &str) -> i32 {
    BUNDLES
        .iter()
        .find(|b| b.0 == bundle)
        .map(|b| b.4)
        .unwrap_or(0)
}

#[derive(Default)]
pub struct Account {
    next: u64,
    pub instances: BTreeMap<String, Instance>,
    operations: BTreeMap<String, Operation>,
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Static IP name → (address, attached instance).
    pub static_ips: BTreeMap<String, (String, Option<String>)>,
    pub key_pairs: BTreeMap<String, String>,
    pub key_pair_tags: BTreeMap<String, Vec<(String, String)>>,
}

pub struct Lightsail {
    pub url: String,
    pub account: Arc<Mutex<Account>>,
    pub faults: Arc<Faults>,
    pub cloud: Cloud,
}

#[derive(Clone)]
struct Ctx {
    account: Arc<Mutex<Account>>,
    faults: Arc<Faults>,
    cloud: Cloud,
    /// The public ports each instance's host has, as last applied.
    enforced: Arc<Mutex<std::collections::HashMap<usize, String>>>,
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-requestid", "00000000-0000-0000-0000-000000000000"),
        ],
        json!({"__type": kind, "message": message, "code": kind}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-requestid", "00000000-0000-0000-0000-000000000001"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn epoch() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

fn location(zone: &str) -> Value {
    // The region is the zone without its letter (eu-west-1a → eu-west-1).
    let region = zone.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    json!({"availabilityZone": zone, "regionName": if region.is_empty() { REGION } else { region }})
}

fn tags_json(tags: &[(String, String)]) -> Vec<Value> {
    tags.iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

fn instance_json(i: &Instance) -> Value {
    let b = BUNDLES
        .iter()
        .find(|b| b.0 == i.bundle)
        .copied()
        .unwrap_or(BUNDLES[0]);
    json!({
        "name": i.name,
        "arn": format!("arn:aws:lightsail:{REGION}:123456789012:Instance/{}", i.name),
        "supportCode": "123456789012/i-0abc",
        "createdAt": i.created,
        "location": location(&i.zone),
        "resourceType": "Instance",
        "tags": tags_json(&i.tags),
        "blueprintId": i.blueprint,
        "blueprintName": "Debian",
        "bundleId": i.bundle,
        "addOns": [],
        "isStaticIp": i.static_ip,
        "privateIpAddress": "172.26.0.10",
        "publicIpAddress": i.public_ip,
        "ipv6Addresses": [],
        "ipAddressType": "dualstack",
        "hardware": {"cpuCount": b.2, "disks": [], "ramSizeInGb": b.3},
        "networking": {"monthlyTransfer": {"gbPerMonthAllocated": 3072}, "ports": i.ports.iter().map(|p| {
            let mut p = p.clone();
            p["accessFrom"] = json!("Custom");
            p["accessType"] = json!("public");
            p["accessDirection"] = json!("inbound");
            p
        }).collect::<Vec<_>>()},
        "state": {"code": if i.state == "running" { 16 } else { 80 }, "name": i.state},
        "username": "admin",
        "sshKeyName": "LightsailDefaultKeyPair",
    })
}

fn operation_json(o: &Operation) -> Value {
    let finished = *o.done.lock().unwrap() && Instant::now() >= o.ready_at;
    json!({
        "id": o.id, "resourceName": o.resource, "resourceType": "Instance",
        "createdAt": epoch(), "location": location("eu-central-1a"),
        "isTerminal": finished, "operationType": o.kind,
        "status": if finished { "Succeeded" } else { "Started" },
        "statusChangedAt": epoch(),
    })
}

impl Lightsail {
    pub fn start(cloud: Cloud) -> Lightsail {
        let account = Arc::new(Mutex::new(Account::default()));
        account.lock().unwrap().key_pairs.insert(
            "ops".into(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdX0q0Ew0s7i0A2mWq5bK3kqJ0x9fQy1mJcS2pD8hZK ops@acme".into(),
        );
        let faults = Arc::new(Faults::default());
        let ctx = Ctx {
            account: account.clone(),
            faults: faults.clone(),
            cloud: cloud.clone(),
            enforced: Default::default(),
        };
        let app = axum::Router::new().fallback(handle).with_state(ctx);
        let (url, _) = super::serve(app);
        Lightsail {
            url,
            account,
            faults,
            cloud,
        }
    }

    /// An instance that already exists (made before tidekeeper managed it),
    /// booted as a test host with the bed's login key, tagged `tags`.
    pub fn add_existing(
        &self,
        name: &str,
        bundle: &str,
        zone: &str,
        tags: &[(&str, &str)],
    ) -> Instance {
        let key = self.cloud.bed.lock().unwrap().public_key.clone();
        let (i, addr) = self.cloud.boot(&super::super::testbed::CloudInit {
            host_key: None,
            authorized: vec![key],
            login: default_user("debian_12"),
            ..Default::default()
        });
        let inst = Instance {
            name: name.into(),
            bundle: bundle.into(),
            blueprint: "debian_12".into(),
            zone: zone.into(),
            state: "running".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            public_ip: Some(addr.to_string()),
            static_ip: false,
            ports: default_ports(),
            created: epoch(),
            host: Some(i),
            user_data: String::new(),
        };
        self.account
            .lock()
            .unwrap()
            .instances
            .insert(name.into(), inst.clone());
        inst
    }

    pub fn instance(&self, name: &str) -> Option<Instance> {
        self.account.lock().unwrap().instances.get(name).cloned()
    }

    /// The instance for tidekeeper host `host`: named so, or tagged so (a
    /// resized host's copy).
    pub fn instance_for(&self, host: &str) -> Option<Instance> {
        let a = self.account.lock().unwrap();
        a.instances
            .values()
            .find(|i| {
                i.tags
                    .iter()
                    .any(|(k, v)| k == "tidekeeper-host" && v == host)
            })
            .or_else(|| a.instances.get(host))
            .cloned()
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.account
            .lock()
            .unwrap()
            .instances
            .values()
            .cloned()
            .collect()
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.account
            .lock()
            .unwrap()
            .snapshots
            .values()
            .cloned()
            .collect()
    }
}

fn op(a: &mut Account, faults: &Faults, resource: &str, kind: &str, done: bool) -> Operation {
    a.next += 1;
    let o = Operation {
        id: format!("{:08x}-0000-4000-8000-{:012x}", a.next, a.next),
        resource: resource.into(),
        kind: kind.into(),
        ready_at: Instant::now() + *faults.action_time.lock().unwrap(),
        done: Arc::new(Mutex::new(done)),
    };
    a.operations.insert(o.id.clone(), o.clone());
    o
}

/// Temporary credentials (as STS, SSO or an instance role hand out): valid
/// only with their session token in `X-Amz-Security-Token`.
pub const TEMP_ACCESS_KEY: &str = "ASIATIDEKEEPERTEMP";
pub const TEMP_SECRET_KEY: &str = "lightsail-temporary-secret";
pub const SESSION_TOKEN: &str = "tidekeeper-session-token/with+odd=chars";

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why the request's SigV4 signature is refused, as (status, code,
/// message): the signature is recomputed from the request as AWS does
/// (canonical request, string to sign, derived key), so a wrong secret, an
/// unsigned or wrong session token, or another region's scope fail here.
pub(super) fn check_auth(
    headers: &HeaderMap,
    method: &str,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<(), (u16, &'static str, &'static str)> {
    const INVALID_TOKEN: (u16, &str, &str) = (
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    );
    const MISMATCH: (u16, &str, &str) = (
        403,
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided.",
    );
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err((
            400,
            "MissingAuthenticationTokenException",
            "missing authentication token",
        ));
    };
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    let (credential, signed, signature) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    );
    let scope: Vec<&str> = credential.split('/').collect();
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    let secret = match (scope[0], token) {
        (ACCESS_KEY, None) => SECRET_KEY,
        (TEMP_ACCESS_KEY, Some(SESSION_TOKEN)) => TEMP_SECRET_KEY,
        _ => return Err(INVALID_TOKEN),
    };
    if scope.len() != 5
        || scope[2].is_empty()
        || !["lightsail", "ec2"].contains(&scope[3])
        || scope[4] != "aws4_request"
    {
        return Err((
            403,
            "InvalidSignatureException",
            "Credential should be scoped to a valid region and service.",
        ));
    }
    let signed: Vec<&str> = signed.split(';').collect();
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signed.contains(&"host")
        || !signed.contains(&"x-amz-date")
        || (token.is_some() && !signed.contains(&"x-amz-security-token"))
        || !date.starts_with(scope[1])
    {
        return Err(MISMATCH);
    }
    let canonical_headers: String = signed
        .iter()
        .map(|h| {
            let v = headers.get(*h).and_then(|v| v.to_str().ok()).unwrap_or("");
            format!("{h}:{}\n", v.trim())
        })
        .collect();
    let payload = tidekeeper::digest::sha256_hex(body);
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload}",
        uri.path(),
        uri.query().unwrap_or(""),
        signed.join(";")
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{}\n{}",
        scope[1..].join("/"),
        tidekeeper::digest::sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), scope[1]);
    for part in &scope[2..] {
        key = hmac(&key, part);
    }
    if hex(&hmac(&key, &to_sign)) != signature {
        return Err(MISMATCH);
    }
    Ok(())
}

async fn handle(
    State(ctx): State<Ctx>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(operation) = target.strip_prefix("Lightsail_20161128.") else {
        return error(400, "UnknownOperationException", "unknown target");
    };
    let operation = operation.to_string();
    if let Err((status, code, message)) = check_auth(&headers, method.as_str(), &uri, &body) {
        return error(status, code, message);
    }
    let mut after = None;
    match ctx.faults.take(&operation) {
        Some(Fault::RateLimited { retry_after }) => {
            let mut r = error(400, "ThrottlingException", "Rate exceeded");
            r.headers_mut().insert(
                "x-amz-retry-after",
                retry_after.as_millis().to_string().parse().unwrap(),
            );
            return r;
        }
        Some(Fault::ServerError) => return error(500, "InternalFailure", "internal failure"),
        Some(f) => after = Some(f),
        None => {}
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = route(&ctx, &operation, &v);
    enforce(&ctx);
    match after {
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            response
        }
        Some(Fault::DoneButFailed) => error(500, "InternalFailure", "internal failure"),
        _ => response,
    }
}

fn tags_of(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["key"].as_str().unwrap_or("").to_string(),
                t["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn not_found(what: &str) -> Response {
    error(
        400,
        "NotFoundException",
        &format!("The {what} does not exist."),
    )
}

/// Lightsail opens 22 (and 80) to everyone on a new instance.
fn default_ports() -> Vec<Value> {
    vec![
        json!({"fromPort": 22, "toPort": 22, "protocol": "tcp", "cidrs": ["0.0.0.0/0"], "ipv6Cidrs": ["::/0"]}),
        json!({"fromPort": 80, "toPort": 80, "protocol": "tcp", "cidrs": ["0.0.0.0/0"], "ipv6Cidrs": ["::/0"]}),
    ]
}

/// Every instance's host admits only its public ports (as Lightsail's
/// firewall in front of an instance does), enforced with nftables.
fn enforce(ctx: &Ctx) {
    // Computed under the lock of what was applied: two requests never apply
    // their views of the account in the other order.
    super::enforce_firewalls(&ctx.cloud, &ctx.enforced, || {
        let a = ctx.account.lock().unwrap();
        a.instances
            .values()
            .filter_map(|i| {
                let host = i.host?;
                let rules: Vec<super::PortRule> = i
                    .ports
                    .iter()
                    .map(|p| {
                        let from = p["cidrs"]
                            .as_array()
                            .into_iter()
                            .chain(p["ipv6Cidrs"].as_array())
                            .flatten()
                            .filter_map(|c| c.as_str().map(String::from))
                            .collect();
                        let proto = match p["protocol"].as_str().unwrap_or("tcp") {
                            "all" => "any".to_string(),
                            other => other.to_string(),
                        };
                        let ports = match (p["fromPort"].as_i64(), p["toPort"].as_i64()) {
                            (Some(a), Some(b)) if a >= 0 => Some((a as u16, b as u16)),
                            _ => None,
                        };
                        super::PortRule { proto, ports, from }
                    })
                    .collect();
                Some((host, super::cloud_firewall_nft(Some(&rules))))
            })
            .collect()
    });
}

/// Instances `instanceNames` of `v`, each booting a test host (from `disk`
/// when made from a snapshot) with the user data and key pair asked for.
fn create_instances(
    ctx: &Ctx,
    a: &mut Account,
    v: &Value,
    bundle: &str,
    blueprint: &str,
    disk: Option<std::path::PathBuf>,
) -> Response {
    let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let names: Vec<String> = v["instanceNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    if !BUNDLES.iter().any(|b| b.0 == bundle) {
        return error(
            400,
            "InvalidInputException",
            &format!("The bundle {bundle} does not exist."),
        );
    }
    if let Some(n) = names.iter().find(|n| a.instances.contains_key(*n)) {
        return error(
            400,
            "InvalidInputException",
            &format!("Some names are already in use: {n}"),
        );
    }
    let mut keys = Vec::new();
    if let Some(k) = v["keyPairName"].as_str() {
        match a.key_pairs.get(k) {
            Some(pk) => keys.push(pk.clone()),
            None => return not_found("KeyPair"),
        }
    }
    let user_data = text("userData");
    let mut ops = Vec::new();
    for n in names {
        a.instances.insert(
            n.clone(),
            Instance {
                name: n.clone(),
                bundle: bundle.to_string(),
                blueprint: blueprint.to_string(),
                zone: text("availabilityZone"),
                state: "pending".into(),
                tags: tags_of(&v["tags"]),
                public_ip: None,
                static_ip: false,
                ports: default_ports(),
                created: epoch(),
                host: None,
                user_data: user_data.clone(),
            },
        );
        let o = op(a, &ctx.faults, &n, "CreateInstance", false);
        ops.push(operation_json(&o));
        let (cloud, account, done) = (ctx.cloud.clone(), ctx.account.clone(), o.done.clone());
        let mut init = cloud_init(&user_data, &keys);
        init.login = default_user(blueprint);
        init.disk = disk.clone();
        std::thread::spawn(move || {
            let (i, addr) = cloud.boot(&init);
            let mut a = account.lock().unwrap();
            if let Some(inst) = a.instances.get_mut(&n) {
                inst.state = "running".into();
                inst.public_ip = Some(addr.to_string());
                inst.host = Some(i);
            }
            *done.lock().unwrap() = true;
        });
    }
    ok(json!({"operations": ops}))
}

/// Who a blueprint's image lets in with the instance's keys, as Lightsail's
/// images do: Debian `admin`, Ubuntu `ubuntu`, Amazon Linux `ec2-user`
/// (root only hears which user to log in as).
fn default_user(blueprint: &str) -> Option<String> {
    let user = match blueprint.split('_').next().unwrap_or_default() {
        "debian" => "admin",
        "ubuntu" => "ubuntu",
        "amazon" => "ec2-user",
        _ => return None,
    };
    Some(user.into())
}

fn route(ctx: &Ctx, operation: &str, v: &Value) -> Response {
    let mut a = ctx.account.lock().unwrap();
    let name = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match operation {
        "GetBundles" => ok(json!({"bundles": BUNDLES.iter().map(|b| json!({
            "price": b.1, "cpuCount": b.2, "diskSizeInGb": b.4, "bundleId": b.0,
            "instanceType": "micro", "isActive": true, "name": b.0.split('_').next().unwrap(),
            "power": 500, "ramSizeInGb": b.3, "transferPerMonthInGb": 3072,
            "supportedPlatforms": ["LINUX_UNIX"], "publicIpv4AddressCount": 1
        })).collect::<Vec<_>>()})),
        "GetInstances" => {
            ok(json!({"instances": a.instances.values().map(instance_json).collect::<Vec<_>>()}))
        }
        "GetInstance" => match a.instances.get(&name("instanceName")) {
            Some(i) => ok(json!({"instance": instance_json(i)})),
            None => not_found("Instance"),
        },
        "GetKeyPairs" => ok(
            json!({"keyPairs": a.key_pairs.keys().map(|k| json!({"name": k})).collect::<Vec<_>>()}),
        ),
        "GetKeyPair" => {
            let n = name("keyPairName");
            match a.key_pairs.get(&n) {
                Some(_) => ok(
                    json!({"keyPair": {"name": n, "resourceType": "KeyPair", "fingerprint": "00:11",
                    "tags": tags_json(a.key_pair_tags.get(&n).map(Vec::as_slice).unwrap_or_default())}}),
                ),
                None => not_found("KeyPair"),
            }
        }
        "ImportKeyPair" => {
            let n = name("keyPairName");
            if a.key_pairs.contains_key(&n) {
                return error(
                    400,
                    "InvalidInputException",
                    "The key pair name is already in use.",
                );
            }
            let key = name("publicKeyBase64");
            if key.split_whitespace().count() < 2 {
                return error(400, "InvalidInputException", "The public key is not valid.");
            }
            a.key_pairs.insert(n.clone(), key);
            let o = op(&mut a, &ctx.faults, &n, "ImportKeyPair", true);
            ok(json!({"operation": operation_json(&o)}))
        }
        "CreateInstances" => {
            let bundle = name("bundleId");
            let blueprint = name("blueprintId");
            create_instances(ctx, &mut a, v, &bundle, &blueprint, None)
        }
        "CreateInstancesFromSnapshot" => {
            let bundle = name("bundleId");
            let Some(snap) = a.snapshots.get(&name("instanceSnapshotName")).cloned() else {
                return not_found("InstanceSnapshot");
            };
            if snap.state != "available" {
                return error(
                    400,
                    "InvalidInputException",
                    "The instance snapshot is not available yet.",
                );
            }
            if disk_gb(&bundle) < disk_gb(&snap.bundle) && BUNDLES.iter().any(|b| b.0 == bundle) {
                return error(
                    400,
                    "InvalidInputException",
                    &format!(
                        "The bundle {bundle} has a smaller disk than the instance snapshot ({} GB).",
                        disk_gb(&snap.bundle)
                    ),
                );
            }
            create_instances(ctx, &mut a, v, &bundle, &snap.blueprint, snap.disk.clone())
        }
        "DeleteInstance" => {
            let n = name("instanceName");
            let Some(inst) = a.instances.remove(&n) else {
                return not_found("Instance");
            };
            for ip in a.static_ips.values_mut() {
                if ip.1.as_deref() == Some(n.as_str()) {
                    ip.1 = None;
                }
            }
            let o = op(&mut a, &ctx.faults, &n, "DeleteInstance", false);
            let (cloud, done) = (ctx.cloud.clone(), o.done.clone());
            std::thread::spawn(move || {
                if let Some(i) = inst.host {
                    cloud.remove(i);
                }
                *done.lock().unwrap() = true;
            });
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "GetOperation" => match a.operations.get(&name("operationId")) {
            Some(o) => ok(json!({"operation": operation_json(o)})),
            None => not_found("Operation"),
        },
        "TagResource" => {
            let n = name("resourceName");
            if a.key_pairs.contains_key(&n) {
                let tags = tags_of(&v["tags"]);
                a.key_pair_tags.entry(n.clone()).or_default().extend(tags);
                let o = op(&mut a, &ctx.faults, &n, "TagResource", true);
                return ok(json!({"operations": [operation_json(&o)]}));
            }
            let Some(i) = a.instances.get_mut(&n) else {
                return not_found("Instance");
            };
            for (k, val) in tags_of(&v["tags"]) {
                i.tags.retain(|t| t.0 != k);
                i.tags.push((k, val));
            }
            let o = op(&mut a, &ctx.faults, &n, "TagResource", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "UntagResource" => {
            let n = name("resourceName");
            let Some(i) = a.instances.get_mut(&n) else {
                return not_found("Instance");
            };
            let keys: Vec<String> = v["tagKeys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(String::from))
                .collect();
            i.tags.retain(|t| !keys.contains(&t.0));
            let o = op(&mut a, &ctx.faults, &n, "UntagResource", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "PutInstancePublicPorts" => {
            let n = name("instanceName");
            let Some(i) = a.instances.get_mut(&n) else {
                return not_found("Instance");
            };
            i.ports = v["portInfos"].as_array().cloned().unwrap_or_default();
            let o = op(&mut a, &ctx.faults, &n, "PutInstancePublicPorts", true);
            ok(json!({"operation": operation_json(&o)}))
        }
        "StartInstance" | "StopInstance" => {
            let n = name("instanceName");
            let start = operation == "StartInstance";
            let Some(i) = a.instances.get_mut(&n) else {
                return not_found("Instance");
            };
            let (from, to) = if start {
                ("stopped", "running")
            } else {
                ("running", "stopped")
            };
            if i.state != from {
                return error(
                    400,
                    "InvalidInputException",
                    &format!("Instance {n} is not {from}."),
                );
            }
            i.state = if start {
                "pending".into()
            } else {
                "stopping".into()
            };
            let host = i.host;
            let o = op(&mut a, &ctx.faults, &n, operation, false);
            let (cloud, account, done) = (ctx.cloud.clone(), ctx.account.clone(), o.done.clone());
            std::thread::spawn(move || {
                if let Some(h) = host {
                    if start {
                        cloud.power_on(h)
                    } else {
                        cloud.power_off(h)
                    }
                }
                if let Some(i) = account.lock().unwrap().instances.get_mut(&n) {
                    i.state = to.into();
                }
                *done.lock().unwrap() = true;
            });
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "GetStaticIps" => ok(
            json!({"staticIps": a.static_ips.iter().map(|(n, (ip, at))| json!({
            "name": n, "arn": format!("arn:aws:lightsail:{REGION}:123456789012:StaticIp/{n}"),
            "supportCode": "x", "createdAt": epoch(), "location": location("eu-central-1a"),
            "resourceType": "StaticIp", "ipAddress": ip, "attachedTo": at, "isAttached": at.is_some()
        })).collect::<Vec<_>>()}),
        ),
        "AllocateStaticIp" => {
            let n = name("staticIpName");
            if a.static_ips.contains_key(&n) {
                return error(
                    400,
                    "InvalidInputException",
                    "The static IP name is already in use.",
                );
            }
            let octet = a.static_ips.len() + 10;
            a.static_ips
                .insert(n.clone(), (format!("198.51.100.{octet}"), None));
            let o = op(&mut a, &ctx.faults, &n, "AllocateStaticIp", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "AttachStaticIp" => {
            let (n, inst) = (name("staticIpName"), name("instanceName"));
            if !a.instances.contains_key(&inst) {
                return not_found("Instance");
            }
            let Some(ip) = a.static_ips.get_mut(&n) else {
                return not_found("StaticIp");
            };
            if ip.1.as_ref().is_some_and(|at| *at != inst) {
                return error(
                    400,
                    "InvalidInputException",
                    "The static IP is attached to another instance; detach it first.",
                );
            }
            ip.1 = Some(inst.clone());
            a.instances.get_mut(&inst).unwrap().static_ip = true;
            let o = op(&mut a, &ctx.faults, &inst, "AttachStaticIp", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "DetachStaticIp" => {
            let n = name("staticIpName");
            let Some(ip) = a.static_ips.get_mut(&n) else {
                return not_found("StaticIp");
            };
            let Some(inst) = ip.1.take() else {
                return error(
                    400,
                    "InvalidInputException",
                    "The static IP is not attached.",
                );
            };
            if let Some(i) = a.instances.get_mut(&inst) {
                i.static_ip = false;
            }
            let o = op(&mut a, &ctx.faults, &inst, "DetachStaticIp", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "ReleaseStaticIp" => {
            let n = name("staticIpName");
            if a.static_ips.remove(&n).is_none() {
                return not_found("StaticIp");
            }
            let o = op(&mut a, &ctx.faults, &n, "ReleaseStaticIp", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "CreateInstanceSnapshot" => {
            let (inst, snap) = (name("instanceName"), name("instanceSnapshotName"));
            let Some(source) = a.instances.get(&inst).cloned() else {
                return not_found("Instance");
            };
            if a.snapshots.contains_key(&snap) {
                return error(
                    400,
                    "InvalidInputException",
                    "The snapshot name is already in use.",
                );
            }
            a.snapshots.insert(
                snap.clone(),
                Snapshot {
                    name: snap.clone(),
                    instance: inst.clone(),
                    tags: tags_of(&v["tags"]),
                    created: epoch(),
                    state: "pending".into(),
                    bundle: source.bundle.clone(),
                    blueprint: source.blueprint.clone(),
                    disk: None,
                },
            );
            // The disk is copied in the background; the snapshot is
            // `pending` until then, as a real one is.
            let (cloud, account, name) = (ctx.cloud.clone(), ctx.account.clone(), snap.clone());
            std::thread::spawn(move || {
                let disk = source
                    .host
                    .map(|h| cloud.bed.lock().unwrap().snapshot_disk(h));
                if let Some(s) = account.lock().unwrap().snapshots.get_mut(&name) {
                    s.disk = disk;
                    s.state = "available".into();
                }
            });
            let o = op(&mut a, &ctx.faults, &snap, "CreateInstanceSnapshot", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        "GetInstanceSnapshots" => ok(
            json!({"instanceSnapshots": a.snapshots.values().map(|s| json!({
            "name": s.name, "arn": format!("arn:aws:lightsail:{REGION}:123456789012:InstanceSnapshot/{}", s.name),
            "createdAt": s.created, "location": location("eu-central-1a"), "resourceType": "InstanceSnapshot",
            "tags": tags_json(&s.tags), "state": s.state, "fromInstanceName": s.instance,
            "fromBundleId": s.bundle, "fromBlueprintId": s.blueprint, "sizeInGb": disk_gb(&s.bundle)
        })).collect::<Vec<_>>()}),
        ),
        "DeleteInstanceSnapshot" => {
            let n = name("instanceSnapshotName");
            let Some(gone) = a.snapshots.remove(&n) else {
                return not_found("InstanceSnapshot");
            };
            if let Some(disk) = gone.disk {
                let _ = std::fs::remove_dir_all(disk);
            }
            let o = op(&mut a, &ctx.faults, &n, "DeleteInstanceSnapshot", true);
            ok(json!({"operations": [operation_json(&o)]}))
        }
        other => error(
            400,
            "UnknownOperationException",
            &format!("unknown operation {other}"),
        ),
    }
}

/// The EC2 instance metadata service (IMDSv2) as an instance with a role
/// sees it: a session token by PUT, then the role's temporary credentials
/// and the region, each only with that token. Its base URL.
pub fn instance_metadata() -> String {
    use axum::routing::{get, put};
    const IMDS_TOKEN: &str = "imds-session-1";
    let authorized = |h: &HeaderMap| {
        h.get("x-aws-ec2-metadata-token")
            .and_then(|v| v.to_str().ok())
            == Some(IMDS_TOKEN)
    };
    let app = axum::Router::new()
        .route(
            "/latest/api/token",
            put(|h: HeaderMap| async move {
                let Some(ttl) = h.get("x-aws-ec2-metadata-token-ttl-seconds").cloned() else {
                    return (StatusCode::BAD_REQUEST, String::new()).into_response();
                };
                ([("x-aws-ec2-metadata-token-ttl-seconds", ttl)], IMDS_TOKEN).into_response()
            }),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/",
            get(move |h: HeaderMap| async move {
                if !authorized(&h) {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                "tidekeeper-role".into_response()
            }),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/tidekeeper-role",
            get(move |h: HeaderMap| async move {
                if !authorized(&h) {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                let expires = chrono::Utc::now() + chrono::Duration::hours(6);
                axum::Json(json!({
                    "Code": "Success",
                    "LastUpdated": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": TEMP_ACCESS_KEY,
                    "SecretAccessKey": TEMP_SECRET_KEY,
                    "Token": SESSION_TOKEN,
                    "Expiration": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }))
                .into_response()
            }),
        )
        .route(
            "/latest/meta-data/placement/region",
            get(move |h: HeaderMap| async move {
                if !authorized(&h) {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                REGION.into_response()
            }),
        );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    crate::support::serve_in_thread(listener, app);
    url
}
