//! A stateful emulator of the Hetzner Cloud API subset tidekeeper uses
//! (`/v1/servers`, server actions, `/v1/actions`, `/v1/firewalls`,
//! `/v1/images`, `/v1/pricing`, `/v1/ssh_keys`), with the API's shapes,
//! error format (`{"error": {"code", "message"}}`), bearer-token auth,
//! pagination, label selectors, delete protection, and actions that run
//! asynchronously.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Cloud, Fault, Faults, cloud_init, now_rfc3339};

pub const TOKEN: &str = "hcloud-test-token";

/// Server types on offer: (id, name, cores, memory GB, disk GB, net EUR/month).
pub const TYPES: &[(i64, &str, i32, f64, f64, f64)] = &[
    (22, "cpx11", 2, 2.0, 40.0, 4.35),
    (23, "cpx21", 3, 4.0, 80.0, 7.55),
    (24, "cpx31", 4, 8.0, 160.0, 13.60),
    (25, "cpx41", 8, 16.0, 240.0, 25.20),
    (26, "cpx51", 16, 32.0, 360.0, 50.40),
    // Arm64 (Ampere): the API says `"architecture": "arm"` for these.
    (45, "cax11", 2, 4.0, 40.0, 3.79),
    (93, "cax21", 4, 8.0, 80.0, 6.49),
    (94, "cax31", 8, 16.0, 160.0, 12.49),
    (95, "cax41", 16, 32.0, 320.0, 24.49),
];

/// A server type's architecture as the API names it.
pub fn architecture(server_type: &str) -> &'static str {
    match server_type.starts_with("cax") {
        true => "arm",
        false => "x86",
    }
}
const LOCATIONS: &[(i64, &str, &str, &str, &str)] = &[
    (1, "fsn1", "Falkenstein DC Park 1", "DE", "Falkenstein"),
    (2, "nbg1", "Nuremberg DC Park 1", "DE", "Nuremberg"),
    (3, "hel1", "Helsinki DC Park 1", "FI", "Helsinki"),
];

#[derive(Debug, Clone)]
pub struct Server {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub server_type: String,
    pub image: String,
    pub location: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Option<String>,
    pub protected: bool,
    pub created: String,
    /// Index of the test host behind it.
    pub host: Option<usize>,
    pub user_data: String,
}

#[derive(Debug, Clone)]
struct Action {
    id: i64,
    command: String,
    resources: Vec<(i64, &'static str)>,
    started: String,
    /// Finished (successfully unless `error`) once this is in the past and `done`.
    ready_at: Instant,
    done: Arc<Mutex<bool>>,
    error: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct Firewall {
    id: i64,
    name: String,
    labels: BTreeMap<String, String>,
    rules: Vec<Value>,
    servers: Vec<i64>,
}

#[derive(Debug, Clone)]
struct Image {
    id: i64,
    description: String,
    labels: BTreeMap<String, String>,
    created: String,
    from: (i64, String),
}

#[derive(Debug, Clone)]
pub struct FloatingIp {
    pub id: i64,
    pub name: String,
    pub ip: String,
    pub server: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub location: String,
}

/// A private network, with a real bridge between the hosts attached to it.
#[derive(Debug, Clone)]
pub struct Network {
    pub id: i64,
    pub name: String,
    pub ip_range: String,
    /// (ip range, network zone)
    pub subnets: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub protected: bool,
    /// Attached servers and their addresses.
    pub servers: BTreeMap<i64, String>,
    /// The test fleet's bridge for it.
    bridge: String,
}

fn network_json(n: &Network) -> Value {
    json!({
        "id": n.id, "name": n.name, "ip_range": n.ip_range, "created": now_rfc3339(),
        "labels": n.labels, "protection": {"delete": n.protected},
        "subnets": n.subnets.iter().map(|(r, z)| {
            let gw = net_addr(r).map(|(b, _)| ip4(b + 1)).unwrap_or_default();
            json!({"type": "cloud", "ip_range": r, "network_zone": z, "gateway": gw, "vswitch_id": null})
        }).collect::<Vec<_>>(),
        "routes": [], "servers": n.servers.keys().collect::<Vec<_>>(), "load_balancers": [],
        "expose_routes_to_vswitch": false
    })
}

/// `10.0.1.0/24` → (base as a number, prefix).
fn net_addr(cidr: &str) -> Option<(u32, u32)> {
    let (a, p) = cidr.split_once('/')?;
    let a: std::net::Ipv4Addr = a.parse().ok()?;
    let p: u32 = p.parse().ok()?;
    (p <= 32).then(|| {
        (
            u32::from(a) & if p == 0 { 0 } else { u32::MAX << (32 - p) },
            p,
        )
    })
}

fn ip4(n: u32) -> String {
    std::net::Ipv4Addr::from(n).to_string()
}

/// Is `ip` a host address of `cidr` (not its network, gateway or broadcast)?
fn usable(cidr: &str, ip: &str) -> bool {
    let (Some((base, p)), Ok(a)) = (net_addr(cidr), ip.parse::<std::net::Ipv4Addr>()) else {
        return false;
    };
    let a = u32::from(a);
    let size = 1u64 << (32 - p);
    let off = (a as u64).wrapping_sub(base as u64);
    off >= 2 && off < size - 1
}

#[derive(Default)]
pub struct Account {
    next: i64,
    pub servers: BTreeMap<i64, Server>,
    actions: BTreeMap<i64, Action>,
    firewalls: BTreeMap<i64, Firewall>,
    images: BTreeMap<i64, Image>,
    pub floating_ips: BTreeMap<i64, FloatingIp>,
    pub networks: BTreeMap<i64, Network>,
    /// Provider SSH keys by name: (public key, labels).
    pub ssh_keys: BTreeMap<String, (String, BTreeMap<String, String>)>,
}

impl Account {
    fn id(&mut self) -> i64 {
        self.next += 1;
        self.next
    }
}

pub struct Hetzner {
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
    /// The firewall each server's host has, as last applied.
    enforced: Arc<Mutex<std::collections::HashMap<usize, String>>>,
}

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message, "details": {}}}).to_string(),
    )
        .into_response()
}

fn ok(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// 429 with Hetzner's headers: none remain, and the bucket (3600 an hour)
/// holds a request again at `until` — so it is full `3600 × (until − now)` later.
fn rate_limited(until: Instant) -> Response {
    let left = until
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    let reset = chrono::Utc::now().timestamp() as f64 + left * 3600.0;
    let mut r = error(
        429,
        "rate_limit_exceeded",
        "limit of 3600 requests per hour reached",
    );
    let h = r.headers_mut();
    h.insert("ratelimit-limit", "3600".parse().unwrap());
    h.insert("ratelimit-remaining", "0".parse().unwrap());
    h.insert(
        "ratelimit-reset",
        format!("{}", reset.ceil() as i64).parse().unwrap(),
    );
    r
}

fn price(net: f64) -> Value {
    json!({"net": format!("{net:.4}"), "gross": format!("{:.4}", net * 1.19)})
}

fn location_json(name: &str) -> Value {
    let (id, name, desc, country, city) = LOCATIONS
        .iter()
        .find(|l| l.1 == name)
        .copied()
        .unwrap_or(LOCATIONS[0]);
    json!({"id": id, "name": name, "description": desc, "country": country, "city": city,
           "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central"})
}

fn type_prices(monthly: f64) -> Vec<Value> {
    LOCATIONS
        .iter()
        .map(|l| {
            json!({"location": l.1, "price_hourly": price(monthly / 730.0), "price_monthly": price(monthly),
                   "included_traffic": 21990232555520_i64, "price_per_tb_traffic": price(1.0)})
        })
        .collect()
}

fn type_json(name: &str) -> Value {
    let t = TYPES
        .iter()
        .find(|t| t.1 == name)
        .copied()
        .unwrap_or(TYPES[0]);
    json!({"id": t.0, "name": t.1, "description": t.1.to_uppercase(), "cores": t.2, "memory": t.3,
           "disk": t.4, "deprecated": false, "deprecation": null, "prices": type_prices(t.5),
           "storage_type": "local", "cpu_type": "shared", "architecture": architecture(t.1), "category": "shared",
           "locations": LOCATIONS.iter().map(|l| json!({"id": l.0, "name": l.1, "deprecation": null})).collect::<Vec<_>>()})
}

fn image_json(name: &str, arch: &str) -> Value {
    json!({"id": 114690387, "type": "system", "status": "available", "name": name,
           "description": "Debian 12", "image_size": null, "disk_size": 5, "created": "2023-06-13T06:00:02+00:00",
           "created_from": null, "bound_to": null, "os_flavor": "debian", "os_version": "12",
           "rapid_deploy": true, "protection": {"delete": false}, "deprecated": null, "deleted": null,
           "labels": {}, "architecture": arch})
}

fn floating_ip_json(f: &FloatingIp) -> Value {
    json!({"id": f.id, "name": f.name, "description": null, "ip": f.ip, "type": "ipv4", "server": f.server,
           "dns_ptr": [], "home_location": location_json(&f.location), "blocked": false,
           "protection": {"delete": false}, "labels": f.labels, "created": now_rfc3339()})
}

fn server_json(s: &Server, a: &Account) -> Value {
    let firewalls = &a.firewalls;
    let floating: Vec<i64> = a
        .floating_ips
        .values()
        .filter(|f| f.server == Some(s.id))
        .map(|f| f.id)
        .collect();
    let fws: Vec<Value> = firewalls
        .values()
        .filter(|f| f.servers.contains(&s.id))
        .map(|f| json!({"id": f.id, "status": "applied"}))
        .collect();
    json!({
        "id": s.id, "name": s.name, "status": s.status, "created": s.created,
        "public_net": {
            "ipv4": s.ipv4.as_ref().map(|ip| json!({"id": s.id + 100000, "ip": ip, "blocked": false, "dns_ptr": format!("static.{ip}.clients.your-server.de")})),
            "ipv6": {"id": s.id + 200000, "ip": format!("2a01:4f8:c17:{:x}::/64", s.id), "blocked": false, "dns_ptr": []},
            "floating_ips": floating, "firewalls": fws
        },
        "private_net": a.networks.values().filter_map(|n| n.servers.get(&s.id).map(|ip| json!({
            "network": n.id, "ip": ip, "alias_ips": [], "mac_address": format!("86:00:00:{:02x}:{:02x}:01", n.id & 255, s.id & 255)
        }))).collect::<Vec<_>>(),
        "server_type": type_json(&s.server_type),
        "datacenter": {"id": 4, "name": format!("{}-dc14", s.location), "description": "DC 14", "location": location_json(&s.location)},
        "location": location_json(&s.location),
        "image": image_json(&s.image, architecture(&s.server_type)),
        "iso": null, "rescue_enabled": false, "locked": false, "backup_window": null,
        "outgoing_traffic": 0, "ingoing_traffic": 0, "included_traffic": 21990232555520_i64,
        "protection": {"delete": s.protected, "rebuild": s.protected},
        "labels": s.labels, "volumes": [], "load_balancers": [],
        "primary_disk_size": TYPES.iter().find(|t| t.1 == s.server_type).map(|t| t.4 as i64).unwrap_or(40),
        "placement_group": null
    })
}

fn action_json(a: &Action) -> Value {
    let finished = *a.done.lock().unwrap() && Instant::now() >= a.ready_at;
    let status = match (finished, &a.error) {
        (false, _) => "running",
        (true, None) => "success",
        (true, Some(_)) => "error",
    };
    json!({
        "id": a.id, "command": a.command, "status": status,
        "progress": if finished { 100 } else { 0 },
        "started": a.started, "finished": if finished { json!(now_rfc3339()) } else { Value::Null },
        "resources": a.resources.iter().map(|(id, t)| json!({"id": id, "type": t})).collect::<Vec<_>>(),
        "error": a.error.as_ref().map(|(c, m)| json!({"code": c, "message": m})),
    })
}

fn firewall_json(f: &Firewall) -> Value {
    json!({"id": f.id, "name": f.name, "labels": f.labels, "created": now_rfc3339(), "rules": f.rules,
           "applied_to": f.servers.iter().map(|id| json!({"type": "server", "server": {"id": id}})).collect::<Vec<_>>()})
}

fn image_snapshot_json(i: &Image) -> Value {
    json!({"id": i.id, "type": "snapshot", "status": "available", "name": null,
           "description": i.description, "image_size": 1.2, "disk_size": 40, "created": i.created,
           "created_from": {"id": i.from.0, "name": i.from.1}, "bound_to": null, "os_flavor": "debian",
           "os_version": null, "rapid_deploy": false, "protection": {"delete": false}, "deprecated": null,
           "deleted": null, "labels": i.labels, "architecture": "x86"})
}

fn meta(page: usize, per_page: usize, total: usize) -> Value {
    let last = total.div_ceil(per_page).max(1);
    json!({"pagination": {"page": page, "per_page": per_page, "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
           "next_page": if page < last { json!(page + 1) } else { Value::Null }, "last_page": last, "total_entries": total}})
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v,k2=v2` (equality terms only, as tidekeeper uses).
fn matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|t| match t.split_once('=') {
            Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
            None => labels.contains_key(t),
        })
}

fn page<T>(items: Vec<T>, q: &HashMap<String, String>) -> (Vec<T>, Value) {
    let per_page: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(25);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let total = items.len();
    let items: Vec<T> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    (items, meta(page, per_page, total))
}

impl Hetzner {
    /// An empty project (with one provider SSH key, `ops`), on `cloud`.
    pub fn start(cloud: Cloud) -> Hetzner {
        let account = Arc::new(Mutex::new(Account {
            next: 1000,
            ..Default::default()
        }));
        account.lock().unwrap().ssh_keys.insert(
            "ops".into(),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdX0q0Ew0s7i0A2mWq5bK3kqJ0x9fQy1mJcS2pD8hZK ops@acme".into(),
                BTreeMap::new(),
            ),
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
        Hetzner {
            url: format!("{url}/v1"),
            account,
            faults,
            cloud,
        }
    }

    /// A server made outside tidekeeper (no ownership labels), not booted.
    pub fn add_unmanaged(&self, name: &str, server_type: &str) -> i64 {
        let mut a = self.account.lock().unwrap();
        let id = a.id();
        a.servers.insert(
            id,
            Server {
                id,
                name: name.into(),
                status: "running".into(),
                server_type: server_type.into(),
                image: "debian-12".into(),
                location: "fsn1".into(),
                labels: BTreeMap::from([("team".into(), "legacy".into())]),
                ipv4: Some("192.0.2.10".into()),
                protected: false,
                created: now_rfc3339(),
                host: None,
                user_data: String::new(),
            },
        );
        id
    }

    /// A floating IP made outside tidekeeper (no ownership labels), unassigned.
    pub fn add_unmanaged_floating_ip(&self, name: &str) -> FloatingIp {
        let mut a = self.account.lock().unwrap();
        let id = a.id();
        let ip = FloatingIp {
            id,
            name: name.into(),
            ip: "198.51.100.7".into(),
            server: None,
            labels: BTreeMap::from([("team".into(), "legacy".into())]),
            location: "fsn1".into(),
        };
        a.floating_ips.insert(id, ip.clone());
        ip
    }

    /// A server this fleet's tidekeeper made earlier, powered off (no test
    /// host behind it): for benchmarks of the cloud stage alone.
    pub fn add_owned_off(&self, fleet: &str, name: &str, server_type: &str) -> i64 {
        let mut a = self.account.lock().unwrap();
        let id = a.id();
        a.servers.insert(
            id,
            Server {
                id,
                name: name.into(),
                status: "off".into(),
                server_type: server_type.into(),
                image: "debian-12".into(),
                location: "fsn1".into(),
                labels: BTreeMap::from([
                    ("managed-by".into(), "tidekeeper".into()),
                    ("tidekeeper-fleet".into(), fleet.into()),
                ]),
                ipv4: Some(format!("192.0.2.{}", id % 250)),
                protected: true,
                created: now_rfc3339(),
                host: None,
                user_data: String::new(),
            },
        );
        id
    }

    pub fn server(&self, name: &str) -> Option<Server> {
        self.account
            .lock()
            .unwrap()
            .servers
            .values()
            .find(|s| s.name == name)
            .cloned()
    }

    pub fn servers(&self) -> Vec<Server> {
        self.account
            .lock()
            .unwrap()
            .servers
            .values()
            .cloned()
            .collect()
    }

    pub fn network(&self, name: &str) -> Option<Network> {
        self.account
            .lock()
            .unwrap()
            .networks
            .values()
            .find(|n| n.name == name)
            .cloned()
    }

    pub fn firewall_rules(&self, name: &str) -> Option<Vec<Value>> {
        self.account
            .lock()
            .unwrap()
            .firewalls
            .values()
            .find(|f| f.name == name)
            .map(|f| f.rules.clone())
    }

    pub fn snapshots(&self) -> Vec<(i64, String, BTreeMap<String, String>)> {
        self.account
            .lock()
            .unwrap()
            .images
            .values()
            .map(|i| (i.id, i.from.1.clone(), i.labels.clone()))
            .collect()
    }
}

/// Start an action that is done after `extra` and once `done` is set.
fn action(
    a: &mut Account,
    faults: &Faults,
    command: &str,
    resources: Vec<(i64, &'static str)>,
    done: bool,
) -> (Action, Arc<Mutex<bool>>) {
    let id = a.id();
    let flag = Arc::new(Mutex::new(done));
    let act = Action {
        id,
        command: command.into(),
        resources,
        started: now_rfc3339(),
        ready_at: Instant::now() + *faults.action_time.lock().unwrap(),
        done: flag.clone(),
        error: None,
    };
    a.actions.insert(id, act.clone());
    (act, flag)
}

fn operation(method: &Method, parts: &[&str]) -> String {
    match (method.as_str(), parts) {
        ("GET", ["servers"]) => "list_servers".into(),
        ("POST", ["servers"]) => "create_server".into(),
        ("GET", ["servers", _]) => "get_server".into(),
        ("PUT", ["servers", _]) => "update_server".into(),
        ("DELETE", ["servers", _]) => "delete_server".into(),
        ("POST", ["servers", _, "actions", a]) => format!("server_{a}"),
        ("GET", ["actions", _]) => "get_action".into(),
        ("GET", ["networks"]) => "list_networks".into(),
        ("POST", ["networks"]) => "create_network".into(),
        ("DELETE", ["networks", _]) => "delete_network".into(),
        ("PUT", ["networks", _]) => "update_network".into(),
        ("PUT", ["firewalls", _]) => "update_firewall".into(),
        ("POST", ["networks", _, "actions", a]) => format!("network_{a}"),
        ("GET", ["firewalls"]) => "list_firewalls".into(),
        ("POST", ["firewalls"]) => "create_firewall".into(),
        ("DELETE", ["firewalls", _]) => "delete_firewall".into(),
        ("POST", ["firewalls", _, "actions", a]) => format!("firewall_{a}"),
        ("GET", ["images"]) => "list_images".into(),
        ("DELETE", ["images", _]) => "delete_image".into(),
        ("GET", ["pricing"]) => "get_pricing".into(),
        ("GET", ["locations"]) => "list_locations".into(),
        ("GET", ["floating_ips"]) => "list_floating_ips".into(),
        ("POST", ["floating_ips"]) => "create_floating_ip".into(),
        ("POST", ["floating_ips", _, "actions", a]) => format!("floating_ip_{a}"),
        ("DELETE", ["floating_ips", _]) => "delete_floating_ip".into(),
        ("GET", ["ssh_keys"]) => "list_ssh_keys".into(),
        ("POST", ["ssh_keys"]) => "create_ssh_key".into(),
        _ => "unknown".into(),
    }
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix("/v1/").unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let op = operation(&method, &parts);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        return error(401, "unauthorized", "unable to authenticate");
    }
    // While the bucket is empty, every request is refused, as the API does.
    let limited = *ctx.faults.limited_until.lock().unwrap();
    if let Some(until) = limited.filter(|u| Instant::now() < *u) {
        ctx.faults
            .log
            .lock()
            .unwrap()
            .push((op.clone(), Instant::now()));
        return rate_limited(until);
    }
    let mut after: Option<Fault> = None;
    match ctx.faults.take(&op) {
        Some(Fault::RateLimited { retry_after }) => {
            let until = Instant::now() + retry_after;
            *ctx.faults.limited_until.lock().unwrap() = Some(until);
            return rate_limited(until);
        }
        Some(Fault::ServerError) => return error(500, "service_error", "service error"),
        Some(f) => after = Some(f),
        None => {}
    }
    let mut response = route(&ctx, &method, &parts, &uri, &body);
    enforce(&ctx);
    // A full bucket of 3600 an hour, refilled at one a second.
    let h = response.headers_mut();
    h.insert("ratelimit-limit", "3600".parse().unwrap());
    h.insert("ratelimit-remaining", "3599".parse().unwrap());
    h.insert(
        "ratelimit-reset",
        (chrono::Utc::now().timestamp() + 1)
            .to_string()
            .parse()
            .unwrap(),
    );
    match after {
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            response
        }
        Some(Fault::DoneButFailed) => error(500, "service_error", "service error"),
        _ => response,
    }
}

/// Every server's host gets the firewalls applied to it, enforced with
/// nftables on its public interface (no firewall: all open), as Hetzner's
/// firewalls sit in front of its servers.
fn enforce(ctx: &Ctx) {
    // Computed under the lock of what was applied: two requests never apply
    // their views of the account in the other order.
    super::enforce_firewalls(&ctx.cloud, &ctx.enforced, || {
        let a = ctx.account.lock().unwrap();
        a.servers
            .values()
            .filter_map(|s| {
                let host = s.host?;
                let fws: Vec<&Firewall> = a
                    .firewalls
                    .values()
                    .filter(|f| f.servers.contains(&s.id))
                    .collect();
                let rules: Option<Vec<super::PortRule>> = (!fws.is_empty()).then(|| {
                    fws.iter()
                        .flat_map(|f| f.rules.iter())
                        .filter(|r| r["direction"].as_str() == Some("in"))
                        .map(|r| super::PortRule {
                            proto: r["protocol"].as_str().unwrap_or("tcp").to_string(),
                            ports: r["port"].as_str().and_then(|p| {
                                let (a, b) = p.split_once('-').unwrap_or((p, p));
                                Some((a.parse().ok()?, b.parse().ok()?))
                            }),
                            from: r["source_ips"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|c| c.as_str().map(String::from))
                                .collect(),
                        })
                        .collect()
                });
                Some((host, super::cloud_firewall_nft(rules.as_deref())))
            })
            .collect()
    });
}

fn route(ctx: &Ctx, method: &Method, parts: &[&str], uri: &Uri, body: &Bytes) -> Response {
    let q = query(uri);
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut a = ctx.account.lock().unwrap();
    let id_of = |s: &str| s.parse::<i64>().ok();
    match (method.as_str(), parts) {
        ("GET", ["pricing"]) => ok(
            200,
            json!({"pricing": {
                "currency": "EUR", "vat_rate": "19.00",
                "image": {"price_per_gb_month": price(0.0119)},
                "floating_ip": {"price_monthly": price(3.0)},
                "floating_ips": [{"type": "ipv4", "prices": LOCATIONS.iter().map(|l| json!({"location": l.1, "price_monthly": price(3.0)})).collect::<Vec<_>>()}],
                "primary_ips": [{"type": "ipv4", "prices": LOCATIONS.iter().map(|l| json!({"location": l.1, "price_hourly": price(0.0008), "price_monthly": price(0.5)})).collect::<Vec<_>>()}],
                "server_backup": {"percentage": "20.00"},
                "server_types": TYPES.iter().map(|t| json!({"id": t.0, "name": t.1, "prices": type_prices(t.5)})).collect::<Vec<_>>(),
                "load_balancer_types": [],
                "volume": {"price_per_gb_month": price(0.044)}
            }}),
        ),
        ("POST", ["ssh_keys"]) => {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let key = v["public_key"].as_str().unwrap_or("").trim().to_string();
            let blob = key.split_whitespace().nth(1).unwrap_or("").to_string();
            if name.is_empty() || blob.is_empty() {
                return error(
                    422,
                    "invalid_input",
                    "invalid input in fields 'name', 'public_key'",
                );
            }
            if a.ssh_keys.contains_key(&name) {
                return error(
                    409,
                    "uniqueness_error",
                    "SSH key with the same name already exists",
                );
            }
            if a.ssh_keys
                .values()
                .any(|(k, _)| k.split_whitespace().nth(1) == Some(blob.as_str()))
            {
                return error(
                    409,
                    "uniqueness_error",
                    "SSH key with the same fingerprint already exists",
                );
            }
            let labels: BTreeMap<String, String> = v["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            a.ssh_keys
                .insert(name.clone(), (key.clone(), labels.clone()));
            let id = a.ssh_keys.len();
            ok(
                201,
                json!({"ssh_key": {"id": id, "name": name, "public_key": key, "fingerprint": "00:11", "labels": labels, "created": now_rfc3339()}}),
            )
        }
        ("GET", ["floating_ips"]) => {
            let list: Vec<Value> = a
                .floating_ips
                .values()
                .filter(|f| q.get("name").is_none_or(|n| *n == f.name))
                .map(floating_ip_json)
                .collect();
            let (items, m) = page(list, &q);
            ok(200, json!({"floating_ips": items, "meta": m}))
        }
        ("POST", ["floating_ips"]) => {
            let name = v["name"].as_str().unwrap_or("").to_string();
            if a.floating_ips.values().any(|f| f.name == name) {
                return error(409, "uniqueness_error", "floating IP name is already used");
            }
            let id = a.id();
            let f = FloatingIp {
                id,
                name,
                ip: format!("198.51.100.{}", 100 + a.floating_ips.len()),
                server: v["server"].as_i64(),
                labels: v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                location: v["home_location"].as_str().unwrap_or("fsn1").to_string(),
            };
            let j = floating_ip_json(&f);
            a.floating_ips.insert(id, f);
            let (act, _) = action(
                &mut a,
                &ctx.faults,
                "create_floating_ip",
                vec![(id, "floating_ip")],
                true,
            );
            ok(201, json!({"floating_ip": j, "action": action_json(&act)}))
        }
        ("POST", ["floating_ips", id, "actions", "assign"]) => {
            let Some(id) = id_of(id).filter(|id| a.floating_ips.contains_key(id)) else {
                return error(404, "not_found", "floating IP not found");
            };
            let server = v["server"].as_i64();
            if server.is_some_and(|sid| !a.servers.contains_key(&sid)) {
                return error(404, "not_found", "server not found");
            }
            a.floating_ips.get_mut(&id).unwrap().server = server;
            let (act, _) = action(
                &mut a,
                &ctx.faults,
                "assign_floating_ip",
                vec![(id, "floating_ip")],
                true,
            );
            ok(201, json!({"action": action_json(&act)}))
        }
        ("DELETE", ["floating_ips", id]) => {
            match id_of(id).and_then(|id| a.floating_ips.remove(&id)) {
                Some(_) => (StatusCode::NO_CONTENT, "").into_response(),
                None => error(404, "not_found", "floating IP not found"),
            }
        }
        ("GET", ["locations"]) => {
            let list: Vec<Value> = LOCATIONS.iter().map(|l| location_json(l.1)).collect();
            let (items, m) = page(list, &q);
            ok(200, json!({"locations": items, "meta": m}))
        }
        ("GET", ["ssh_keys"]) => {
            let keys: Vec<Value> = a
                .ssh_keys
                .iter()
                .enumerate()
                .map(|(i, (n, (k, labels)))| json!({"id": i + 1, "name": n, "public_key": k, "fingerprint": "00:11", "labels": labels, "created": now_rfc3339()}))
                .collect();
            let (items, m) = page(keys, &q);
            ok(200, json!({"ssh_keys": items, "meta": m}))
        }
        ("GET", ["servers"]) => {
            let list: Vec<Value> = a
                .servers
                .values()
                .filter(|s| q.get("name").is_none_or(|n| *n == s.name))
                .filter(|s| {
                    q.get("label_selector")
                        .is_none_or(|sel| matches(sel, &s.labels))
                })
                .map(|s| server_json(s, &a))
                .collect();
            let (items, m) = page(list, &q);
            ok(200, json!({"servers": items, "meta": m}))
        }
        ("GET", ["servers", id]) => match id_of(id).and_then(|id| a.servers.get(&id)) {
            Some(s) => ok(200, json!({"server": server_json(s, &a)})),
            None => error(404, "not_found", "server not found"),
        },
        ("POST", ["servers"]) => {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let server_type = v["server_type"].as_str().unwrap_or("").to_string();
            if name.is_empty() || v["image"].as_str().is_none() {
                return error(
                    422,
                    "invalid_input",
                    "invalid input in fields 'name', 'image'",
                );
            }
            if !TYPES.iter().any(|t| t.1 == server_type) {
                return error(
                    422,
                    "invalid_input",
                    &format!("server type {server_type} not found"),
                );
            }
            if a.servers.values().any(|s| s.name == name) {
                return error(409, "uniqueness_error", "server name is already used");
            }
            let mut keys = Vec::new();
            for k in v["ssh_keys"].as_array().into_iter().flatten() {
                let k = k.as_str().unwrap_or("");
                match a.ssh_keys.get(k) {
                    Some((pk, _)) => keys.push(pk.clone()),
                    None => return error(422, "invalid_input", &format!("SSH key {k} not found")),
                }
            }
            let id = a.id();
            let labels: BTreeMap<String, String> = v["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let user_data = v["user_data"].as_str().unwrap_or("").to_string();
            let server = Server {
                id,
                name,
                status: "initializing".into(),
                server_type,
                image: v["image"].as_str().unwrap_or("").into(),
                location: v["location"].as_str().unwrap_or("fsn1").into(),
                labels,
                ipv4: None,
                protected: false,
                created: now_rfc3339(),
                host: None,
                user_data: user_data.clone(),
            };
            for f in v["firewalls"].as_array().into_iter().flatten() {
                if let Some(fw) = f["firewall"]
                    .as_i64()
                    .and_then(|fid| a.firewalls.get_mut(&fid))
                {
                    fw.servers.push(id);
                }
            }
            let json_server = server_json(&server, &a);
            a.servers.insert(id, server);
            let (create, done1) = action(
                &mut a,
                &ctx.faults,
                "create_server",
                vec![(id, "server")],
                false,
            );
            let (start, done2) = action(
                &mut a,
                &ctx.faults,
                "start_server",
                vec![(id, "server")],
                false,
            );
            // Boot the server's host in the background, as the provider would.
            let (cloud, account) = (ctx.cloud.clone(), ctx.account.clone());
            let init = cloud_init(&user_data, &keys);
            std::thread::spawn(move || {
                let (i, addr) = cloud.boot(&init);
                let mut a = account.lock().unwrap();
                if let Some(s) = a.servers.get_mut(&id) {
                    s.status = "running".into();
                    s.ipv4 = Some(addr.to_string());
                    s.host = Some(i);
                }
                *done1.lock().unwrap() = true;
                *done2.lock().unwrap() = true;
            });
            ok(
                201,
                json!({"server": json_server, "action": action_json(&create), "next_actions": [action_json(&start)], "root_password": null}),
            )
        }
        ("PUT", ["servers", id]) => {
            let Some(s) = id_of(id).and_then(|id| a.servers.get_mut(&id)) else {
                return error(404, "not_found", "server not found");
            };
            if let Some(l) = v["labels"].as_object() {
                s.labels = l
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
            }
            if let Some(n) = v["name"].as_str() {
                s.name = n.into();
            }
            let s = s.clone();
            ok(200, json!({"server": server_json(&s, &a)}))
        }
        ("DELETE", ["servers", id]) => {
            let Some(id) = id_of(id).filter(|id| a.servers.contains_key(id)) else {
                return error(404, "not_found", "server not found");
            };
            if a.servers[&id].protected {
                return error(403, "protected", "server is protected against deletion");
            }
            let s = a.servers.remove(&id).unwrap();
            for f in a.firewalls.values_mut() {
                f.servers.retain(|x| *x != id);
            }
            for n in a.networks.values_mut() {
                n.servers.remove(&id);
            }
            for f in a.floating_ips.values_mut() {
                if f.server == Some(id) {
                    f.server = None;
                }
            }
            let (act, done) = action(
                &mut a,
                &ctx.faults,
                "delete_server",
                vec![(id, "server")],
                false,
            );
            let cloud = ctx.cloud.clone();
            std::thread::spawn(move || {
                if let Some(i) = s.host {
                    cloud.remove(i);
                }
                *done.lock().unwrap() = true;
            });
            ok(200, json!({"action": action_json(&act)}))
        }
        ("POST", ["servers", id, "actions", what]) => {
            let Some(id) = id_of(id).filter(|id| a.servers.contains_key(id)) else {
                return error(404, "not_found", "server not found");
            };
            server_action(ctx, &mut a, id, what, &v)
        }
        ("GET", ["networks"]) => {
            let list: Vec<Value> = a
                .networks
                .values()
                .filter(|n| q.get("name").is_none_or(|x| *x == n.name))
                .filter(|n| {
                    q.get("label_selector")
                        .is_none_or(|sel| matches(sel, &n.labels))
                })
                .map(network_json)
                .collect();
            let (items, m) = page(list, &q);
            ok(200, json!({"networks": items, "meta": m}))
        }
        ("POST", ["networks"]) => {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let range = v["ip_range"].as_str().unwrap_or("").to_string();
            if name.is_empty() || net_addr(&range).is_none() {
                return error(
                    422,
                    "invalid_input",
                    "invalid input in fields 'name', 'ip_range'",
                );
            }
            if a.networks.values().any(|n| n.name == name) {
                return error(409, "uniqueness_error", "network name is already used");
            }
            let mut subnets = Vec::new();
            for sn in v["subnets"].as_array().into_iter().flatten() {
                let r = sn["ip_range"].as_str().unwrap_or("").to_string();
                let inside = matches!((net_addr(&range), net_addr(&r)), (Some((b, p)), Some((x, q))) if q >= p && (x & if p == 0 { 0 } else { u32::MAX << (32 - p) }) == b);
                if !inside || sn["type"].as_str() != Some("cloud") {
                    return error(
                        422,
                        "invalid_input",
                        "subnet ip_range must be a cloud subnet inside the network's ip_range",
                    );
                }
                subnets.push((
                    r,
                    sn["network_zone"]
                        .as_str()
                        .unwrap_or("eu-central")
                        .to_string(),
                ));
            }
            let id = a.id();
            let bridge = ctx.cloud.bed.lock().unwrap().network_create();
            let n = Network {
                id,
                name,
                ip_range: range,
                subnets,
                labels: v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                protected: false,
                servers: BTreeMap::new(),
                bridge,
            };
            let j = network_json(&n);
            a.networks.insert(id, n);
            ok(201, json!({"network": j}))
        }
        ("DELETE", ["networks", id]) => {
            let Some(id) = id_of(id).filter(|id| a.networks.contains_key(id)) else {
                return error(404, "not_found", "network not found");
            };
            if a.networks[&id].protected {
                return error(403, "protected", "network is protected against deletion");
            }
            // Attached servers are detached with it.
            let n = a.networks.remove(&id).unwrap();
            ctx.cloud.bed.lock().unwrap().network_remove(&n.bridge);
            ok(204, Value::Null)
        }
        ("POST", ["networks", id, "actions", what]) => {
            let Some(id) = id_of(id).filter(|id| a.networks.contains_key(id)) else {
                return error(404, "not_found", "network not found");
            };
            match *what {
                "change_protection" => {
                    if let Some(d) = v["delete"].as_bool() {
                        a.networks.get_mut(&id).unwrap().protected = d;
                    }
                }
                "add_subnet" => {
                    let r = v["ip_range"].as_str().unwrap_or("").to_string();
                    if net_addr(&r).is_none() {
                        return error(422, "invalid_input", "invalid input in field 'ip_range'");
                    }
                    let z = v["network_zone"]
                        .as_str()
                        .unwrap_or("eu-central")
                        .to_string();
                    a.networks.get_mut(&id).unwrap().subnets.push((r, z));
                }
                _ => return error(404, "not_found", &format!("unknown action {what}")),
            }
            let (act, _) = action(&mut a, &ctx.faults, what, vec![(id, "network")], true);
            ok(201, json!({"action": action_json(&act)}))
        }
        ("GET", ["actions", id]) => match id_of(id).and_then(|id| a.actions.get(&id)) {
            Some(act) => ok(200, json!({"action": action_json(act)})),
            None => error(404, "not_found", "action not found"),
        },
        ("GET", ["firewalls"]) => {
            let list: Vec<Value> = a
                .firewalls
                .values()
                .filter(|f| q.get("name").is_none_or(|n| *n == f.name))
                .filter(|f| {
                    q.get("label_selector")
                        .is_none_or(|sel| matches(sel, &f.labels))
                })
                .map(firewall_json)
                .collect();
            let (items, m) = page(list, &q);
            ok(200, json!({"firewalls": items, "meta": m}))
        }
        ("POST", ["firewalls"]) => {
            let name = v["name"].as_str().unwrap_or("").to_string();
            if a.firewalls.values().any(|f| f.name == name) {
                return error(409, "uniqueness_error", "firewall name is already used");
            }
            let id = a.id();
            let fw = Firewall {
                id,
                name,
                labels: v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                rules: rules(&v["rules"]),
                servers: vec![],
            };
            let j = firewall_json(&fw);
            a.firewalls.insert(id, fw);
            ok(201, json!({"firewall": j, "actions": []}))
        }
        // Update: a new name (unique) and the labels, which replace the old.
        ("PUT", [kind @ ("firewalls" | "networks"), id]) => {
            let name = v["name"].as_str().map(str::to_string);
            let labels: Option<BTreeMap<String, String>> = v["labels"].as_object().map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            });
            let Some(id) = id_of(id) else {
                return error(404, "not_found", "not found");
            };
            if *kind == "firewalls" {
                if name
                    .as_ref()
                    .is_some_and(|n| a.firewalls.values().any(|f| &f.name == n && f.id != id))
                {
                    return error(409, "uniqueness_error", "firewall name is already used");
                }
                let Some(f) = a.firewalls.get_mut(&id) else {
                    return error(404, "not_found", "firewall not found");
                };
                f.name = name.unwrap_or(f.name.clone());
                f.labels = labels.unwrap_or(f.labels.clone());
                let j = firewall_json(f);
                ok(200, json!({"firewall": j}))
            } else {
                let Some(n) = a.networks.get_mut(&id) else {
                    return error(404, "not_found", "network not found");
                };
                n.name = name.unwrap_or(n.name.clone());
                n.labels = labels.unwrap_or(n.labels.clone());
                let j = network_json(n);
                ok(200, json!({"network": j}))
            }
        }
        ("DELETE", ["firewalls", id]) => {
            let Some(id) = id_of(id).filter(|id| a.firewalls.contains_key(id)) else {
                return error(404, "not_found", "firewall not found");
            };
            if !a.firewalls[&id].servers.is_empty() {
                return error(
                    422,
                    "resource_in_use",
                    "firewall is still applied to a resource",
                );
            }
            a.firewalls.remove(&id);
            (StatusCode::NO_CONTENT, "").into_response()
        }
        ("POST", ["firewalls", id, "actions", what]) => {
            let Some(id) = id_of(id).filter(|id| a.firewalls.contains_key(id)) else {
                return error(404, "not_found", "firewall not found");
            };
            match *what {
                "set_rules" => {
                    a.firewalls.get_mut(&id).unwrap().rules = rules(&v["rules"]);
                }
                "apply_to_resources" | "remove_from_resources" => {
                    let key = if *what == "apply_to_resources" {
                        "apply_to"
                    } else {
                        "remove_from"
                    };
                    for r in v[key].as_array().into_iter().flatten() {
                        if let Some(sid) = r["server"]["id"].as_i64() {
                            let f = a.firewalls.get_mut(&id).unwrap();
                            f.servers.retain(|x| *x != sid);
                            if *what == "apply_to_resources" {
                                f.servers.push(sid);
                            }
                        }
                    }
                }
                _ => return error(404, "not_found", "unknown action"),
            }
            let (act, _) = action(&mut a, &ctx.faults, what, vec![(id, "firewall")], true);
            ok(201, json!({"actions": [action_json(&act)]}))
        }
        ("GET", ["images"]) => {
            let list: Vec<Value> = a
                .images
                .values()
                .filter(|i| {
                    q.get("label_selector")
                        .is_none_or(|sel| matches(sel, &i.labels))
                })
                .map(image_snapshot_json)
                .collect();
            let (items, m) = page(list, &q);
            ok(200, json!({"images": items, "meta": m}))
        }
        ("DELETE", ["images", id]) => match id_of(id).and_then(|id| a.images.remove(&id)) {
            Some(_) => (StatusCode::NO_CONTENT, "").into_response(),
            None => error(404, "not_found", "image not found"),
        },
        _ => error(
            404,
            "not_found",
            &format!("no route {} /v1/{}", method, parts.join("/")),
        ),
    }
}

fn rules(v: &Value) -> Vec<Value> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            json!({"direction": r["direction"], "protocol": r["protocol"], "port": r["port"],
                   "source_ips": r.get("source_ips").cloned().unwrap_or(json!([])),
                   "destination_ips": r.get("destination_ips").cloned().unwrap_or(json!([])),
                   "description": r.get("description").cloned().unwrap_or(Value::Null)})
        })
        .collect()
}

fn server_action(ctx: &Ctx, a: &mut Account, id: i64, what: &str, v: &Value) -> Response {
    let res = vec![(id, "server")];
    match what {
        "change_protection" => {
            let s = a.servers.get_mut(&id).unwrap();
            if let Some(d) = v["delete"].as_bool() {
                s.protected = d;
            }
            let (act, _) = action(a, &ctx.faults, "change_protection", res, true);
            ok(201, json!({"action": action_json(&act)}))
        }
        "poweroff" | "shutdown" => {
            let host = {
                let s = a.servers.get_mut(&id).unwrap();
                s.status = "off".into();
                s.host
            };
            let (act, done) = action(a, &ctx.faults, what, res, false);
            let cloud = ctx.cloud.clone();
            std::thread::spawn(move || {
                if let Some(i) = host {
                    cloud.power_off(i);
                }
                *done.lock().unwrap() = true;
            });
            ok(201, json!({"action": action_json(&act)}))
        }
        "poweron" => {
            let host = {
                let s = a.servers.get_mut(&id).unwrap();
                s.status = "starting".into();
                s.host
            };
            let (act, done) = action(a, &ctx.faults, "start_server", res, false);
            let (cloud, account) = (ctx.cloud.clone(), ctx.account.clone());
            std::thread::spawn(move || {
                if let Some(i) = host {
                    cloud.power_on(i);
                }
                if let Some(s) = account.lock().unwrap().servers.get_mut(&id) {
                    s.status = "running".into();
                }
                *done.lock().unwrap() = true;
            });
            ok(201, json!({"action": action_json(&act)}))
        }
        "attach_to_network" => {
            let Some(nid) = v["network"].as_i64().filter(|n| a.networks.contains_key(n)) else {
                return error(404, "not_found", "network not found");
            };
            let n = &a.networks[&nid];
            if n.servers.contains_key(&id) {
                return error(
                    422,
                    "server_already_attached",
                    "server is already attached to this network",
                );
            }
            let taken = |ip: &str| n.servers.values().any(|x| x == ip);
            let ip = match v["ip"].as_str() {
                Some(ip) => {
                    if !n.subnets.iter().any(|(r, _)| usable(r, ip)) {
                        return error(
                            422,
                            "invalid_input",
                            &format!("ip {ip} is not in a subnet of the network"),
                        );
                    }
                    if taken(ip) {
                        return error(
                            422,
                            "ip_not_available",
                            &format!("ip {ip} is already in use"),
                        );
                    }
                    ip.to_string()
                }
                None => {
                    let Some((r, _)) = n.subnets.first() else {
                        return error(422, "no_subnet_available", "the network has no subnet");
                    };
                    let (base, p) = net_addr(r).unwrap();
                    match (2..(1u32 << (32 - p)) - 1)
                        .map(|o| ip4(base + o))
                        .find(|ip| !taken(ip))
                    {
                        Some(ip) => ip,
                        None => {
                            return error(422, "ip_not_available", "no address left in the subnet");
                        }
                    }
                }
            };
            let prefix = n
                .subnets
                .iter()
                .find(|(r, _)| usable(r, &ip))
                .and_then(|(r, _)| net_addr(r))
                .map(|(_, p)| p)
                .unwrap_or(32);
            let bridge = n.bridge.clone();
            let ifname = format!(
                "ens{}",
                10 + a
                    .networks
                    .values()
                    .filter(|x| x.servers.contains_key(&id))
                    .count()
            );
            if let Some(host) = a.servers[&id].host {
                ctx.cloud.bed.lock().unwrap().network_attach(
                    &bridge,
                    host,
                    &format!("{ip}/{prefix}"),
                    &ifname,
                );
            }
            a.networks.get_mut(&nid).unwrap().servers.insert(id, ip);
            let (act, _) = action(
                a,
                &ctx.faults,
                "attach_to_network",
                vec![(id, "server"), (nid, "network")],
                true,
            );
            ok(201, json!({"action": action_json(&act)}))
        }
        "detach_from_network" => {
            let Some(nid) = v["network"].as_i64().filter(|n| a.networks.contains_key(n)) else {
                return error(404, "not_found", "network not found");
            };
            if a.networks
                .get_mut(&nid)
                .unwrap()
                .servers
                .remove(&id)
                .is_none()
            {
                return error(
                    422,
                    "server_not_attached",
                    "server is not attached to this network",
                );
            }
            if let Some(host) = a.servers[&id].host {
                ctx.cloud
                    .bed
                    .lock()
                    .unwrap()
                    .network_detach(&a.networks[&nid].bridge, host);
            }
            let (act, _) = action(
                a,
                &ctx.faults,
                "detach_from_network",
                vec![(id, "server"), (nid, "network")],
                true,
            );
            ok(201, json!({"action": action_json(&act)}))
        }
        "change_type" => {
            let want = v["server_type"].as_str().unwrap_or("").to_string();
            if !TYPES.iter().any(|t| t.1 == want) {
                return error(
                    422,
                    "invalid_input",
                    &format!("server type {want} not found"),
                );
            }
            let s = a.servers.get_mut(&id).unwrap();
            if s.status != "off" {
                return error(
                    409,
                    "server_not_stopped",
                    "server must be stopped to change its type",
                );
            }
            s.server_type = want;
            let (act, _) = action(a, &ctx.faults, "change_server_type", res, true);
            ok(201, json!({"action": action_json(&act)}))
        }
        "create_image" => {
            let iid = a.id();
            let name = a.servers[&id].name.clone();
            let img = Image {
                id: iid,
                description: v["description"].as_str().unwrap_or("").into(),
                labels: v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                created: now_rfc3339(),
                from: (id, name),
            };
            let j = image_snapshot_json(&img);
            a.images.insert(iid, img);
            let (act, _) = action(
                a,
                &ctx.faults,
                "create_image",
                vec![(id, "server"), (iid, "image")],
                true,
            );
            ok(201, json!({"image": j, "action": action_json(&act)}))
        }
        _ => error(404, "not_found", &format!("unknown action {what}")),
    }
}

impl Hetzner {
    /// A running server made outside tidekeeper (no ownership labels), with
    /// a test host behind it that the bed's key logs in to.
    /// A firewall made by hand (no labels), applied to server `server`.
    pub fn add_unmanaged_firewall(&self, name: &str, rules: Value, server: i64) {
        let mut a = self.account.lock().unwrap();
        let id = a.id();
        let fw = Firewall {
            id,
            name: name.into(),
            labels: BTreeMap::new(),
            rules: self::rules(&rules),
            servers: vec![server],
        };
        a.firewalls.insert(id, fw);
    }

    /// A network made by hand (no labels), with server `server` at `ip`.
    pub fn add_unmanaged_network(&self, name: &str, range: &str, server: i64, ip: &str) {
        let bridge = self.cloud.bed.lock().unwrap().network_create();
        let mut a = self.account.lock().unwrap();
        let id = a.id();
        a.networks.insert(
            id,
            Network {
                id,
                name: name.into(),
                ip_range: range.into(),
                subnets: vec![(range.into(), "eu-central".into())],
                labels: BTreeMap::new(),
                protected: false,
                servers: BTreeMap::from([(server, ip.to_string())]),
                bridge,
            },
        );
    }

    /// The labels of the firewall named `name`.
    pub fn firewall_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let a = self.account.lock().unwrap();
        a.firewalls
            .values()
            .find(|f| f.name == name)
            .map(|f| f.labels.clone())
    }

    pub fn add_unmanaged_booted(&self, name: &str, server_type: &str) -> i64 {
        let key = self.cloud.bed.lock().unwrap().public_key.clone();
        let (i, addr) = self.cloud.boot(&super::super::testbed::CloudInit {
            host_key: None,
            authorized: vec![key],
            ..Default::default()
        });
        let mut a = self.account.lock().unwrap();
        let id = a.id();
        a.servers.insert(
            id,
            Server {
                id,
                name: name.into(),
                status: "running".into(),
                server_type: server_type.into(),
                image: "debian-12".into(),
                location: "nbg1".into(),
                labels: BTreeMap::from([("team".into(), "legacy".into())]),
                ipv4: Some(addr.to_string()),
                protected: false,
                created: now_rfc3339(),
                host: Some(i),
                user_data: String::new(),
            },
        );
        id
    }
}
