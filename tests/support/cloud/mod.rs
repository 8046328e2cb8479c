//! Local emulators of the cloud APIs tidekeeper uses, for tests only: a
//! stateful Hetzner Cloud API (`hetzner`), Lightsail's awsJson1.1
//! protocol (`lightsail`) and EC2's Query API (`ec2`). tidekeeper talks to them with the real SDK
//! clients (`hcloud` with its base path mapped, `aws-sdk-lightsail` with an
//! endpoint URL).
//!
//! Creating a server boots a real test-fleet host (see [`Cloud`]): its host
//! key and login keys come from the user data tidekeeper sends, read as
//! cloud-init reads it, so create → SSH → configure runs for real. Actions
//! take time (the boot itself, plus [`Faults::action_time`]), and faults can
//! be injected: 429s with rate-limit headers, 500s, slow answers.

#![allow(dead_code)]

pub mod ec2;
pub mod hetzner;
pub mod lightsail;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fleet::FleetRepo;
use super::testbed::{CloudInit, Kind, Testbed};

/// How long a daemon wait that includes creating cloud servers may take: a
/// container boot on a loaded machine, plus tidekeeper's own SSH wait for new
/// servers (300 s, `SSH_WAIT` in src/reconcile.rs) with room to configure.
pub const SERVER_CREATE: Duration = Duration::from_secs(360);

/// One injected fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with the provider's rate-limit headers, asking to wait `retry_after`.
    RateLimited { retry_after: Duration },
    /// 500 (Hetzner) / 500 InternalFailure (Lightsail).
    ServerError,
    /// The request is carried out, but the answer comes this late.
    Slow(Duration),
    /// The request is carried out, then answered with a 500.
    DoneButFailed,
}

#[derive(Debug, Clone)]
struct Rule {
    fault: Fault,
    /// Operation name (`create_server`, `CreateInstances`, …); None: any.
    only: Option<String>,
    times: u32,
}

/// Faults to inject, shared with the test.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<VecDeque<Rule>>,
    /// Extra time every asynchronous action takes.
    pub action_time: Mutex<Duration>,
    /// Every request, as `OPERATION` names with when it came, in order.
    pub log: Mutex<Vec<(String, Instant)>>,
    /// Hetzner: the bucket is empty until then (every request gets a 429).
    pub limited_until: Mutex<Option<Instant>>,
    /// Added to every answer (a network between tidekeeper and the API).
    pub latency: Mutex<Duration>,
}

impl Faults {
    /// Inject `fault` into the next `times` requests of `only` (or any).
    pub fn add(&self, fault: Fault, only: Option<&str>, times: u32) {
        self.rules.lock().unwrap().push_back(Rule {
            fault,
            only: only.map(String::from),
            times,
        });
    }
    pub fn slow_actions(&self, d: Duration) {
        *self.action_time.lock().unwrap() = d;
    }
    /// The fault for this request, if any (consumed); a configured latency
    /// comes back as a slow answer.
    pub fn take(&self, op: &str) -> Option<Fault> {
        self.log
            .lock()
            .unwrap()
            .push((op.to_string(), Instant::now()));
        let latency = *self.latency.lock().unwrap();
        let mut rules = self.rules.lock().unwrap();
        let Some(i) = rules
            .iter()
            .position(|r| r.only.as_deref().is_none_or(|o| o == op))
        else {
            return (!latency.is_zero()).then_some(Fault::Slow(latency));
        };
        let fault = rules[i].fault.clone();
        rules[i].times -= 1;
        if rules[i].times == 0 {
            rules.remove(i);
        }
        Some(fault)
    }
    pub fn count(&self, op: &str) -> usize {
        self.times(op).len()
    }
    /// When each request of `op` came.
    pub fn times(&self, op: &str) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, t)| *t)
            .collect()
    }
    pub fn pending(&self) -> usize {
        self.rules.lock().unwrap().len()
    }
}

/// Read user data as cloud-init does: a `#cloud-config` document, or a MIME
/// multipart message of cloud-config and shell script parts.
pub fn cloud_init(user_data: &str, provider_keys: &[String]) -> CloudInit {
    let mut out = CloudInit {
        authorized: provider_keys.to_vec(),
        ..Default::default()
    };
    let mut parts: Vec<(String, String)> = Vec::new();
    if let Some(rest) = user_data.strip_prefix("Content-Type: multipart/mixed") {
        let boundary = rest
            .split("boundary=\"")
            .nth(1)
            .and_then(|b| b.split('"').next())
            .unwrap_or_default()
            .to_string();
        for part in user_data.split(&format!("--{boundary}")).skip(1) {
            let Some((head, body)) = part.split_once("\n\n") else {
                continue;
            };
            let kind = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Type: "))
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .to_string();
            parts.push((kind, body.trim_end_matches('\n').to_string() + "\n"));
        }
    } else if user_data.starts_with("#cloud-config") {
        parts.push(("text/cloud-config".into(), user_data.to_string()));
    } else if user_data.starts_with("#!") {
        parts.push(("text/x-shellscript".into(), user_data.to_string()));
    }
    for (kind, body) in parts {
        match kind.as_str() {
            "text/cloud-config" => {
                let v: serde_json::Value = serde_saphyr::from_str(&body).unwrap_or_default();
                if let (Some(private), Some(public)) = (
                    v["ssh_keys"]["ed25519_private"].as_str(),
                    v["ssh_keys"]["ed25519_public"].as_str(),
                ) {
                    out.host_key = Some((private.to_string(), public.trim().to_string()));
                }
                for k in v["ssh_authorized_keys"].as_array().into_iter().flatten() {
                    if let Some(k) = k.as_str() {
                        out.authorized.push(k.to_string());
                    }
                }
            }
            "text/x-shellscript" => out.scripts.push(body),
            _ => {}
        }
    }
    out
}

/// The test fleet behind the emulators: creating a server boots a host.
#[derive(Clone)]
pub struct Cloud {
    pub bed: Arc<Mutex<Testbed>>,
    /// What kind of test host a new server gets.
    pub kind: Kind,
}

impl Cloud {
    /// A cloud with no servers yet (the bed has `n` ordinary hosts too).
    pub fn new(n: usize) -> Cloud {
        Self::with_kind(n, Kind::Full)
    }

    /// A cloud whose servers are `kind` hosts (`Kind::Docker` to run containers).
    pub fn with_kind(n: usize, kind: Kind) -> Cloud {
        Cloud {
            bed: Arc::new(Mutex::new(Testbed::start(n))),
            kind,
        }
    }

    /// Boot a host for a new server (blocking; run it off the async runtime).
    pub fn boot(&self, init: &CloudInit) -> (usize, Ipv4Addr) {
        let i = self.bed.lock().unwrap().add_cloud_host(self.kind, init);
        let addr = self.bed.lock().unwrap().host(i).address;
        if !wait_port(addr, Duration::from_secs(90)) {
            panic!(
                "server host {i} ({addr}) did not open SSH; console:\n{}",
                self.bed.lock().unwrap().host(i).log()
            );
        }
        (i, addr)
    }

    pub fn power_off(&self, i: usize) {
        self.bed.lock().unwrap().power_off(i);
    }

    pub fn power_on(&self, i: usize) {
        self.bed.lock().unwrap().power_on(i);
        let addr = self.bed.lock().unwrap().host(i).address;
        assert!(
            wait_port(addr, Duration::from_secs(90)),
            "{addr} did not come back"
        );
    }

    pub fn remove(&self, i: usize) {
        self.bed.lock().unwrap().remove(i);
    }

    /// Run `command` on host `i` as root (through sudo where the image's
    /// default user logs in), with `key` (the key the server authorizes).
    /// From inside the host's own network namespace, as a provider's
    /// console is: its cloud firewall does not stand in the way.
    pub fn ssh(&self, i: usize, key: &std::path::Path, command: &str) -> std::process::Output {
        let login = self.bed.lock().unwrap().host(i).login.clone();
        if login == "root" {
            self.ssh_as(i, key, "root", command)
        } else {
            let command = format!("sudo -n sh -c {}", crate::support::shell_quote(command));
            self.ssh_as(i, key, &login, &command)
        }
    }

    /// Run `command` on host `i` as `user`, as it is.
    pub fn ssh_as(
        &self,
        i: usize,
        key: &std::path::Path,
        user: &str,
        command: &str,
    ) -> std::process::Output {
        let bed = self.bed.lock().unwrap();
        let h = bed.host(i);
        std::process::Command::new("ip")
            .args(["netns", "exec", &bed.netns(i), "ssh"])
            .args(["-i", key.to_str().unwrap(), "-o", "IdentitiesOnly=yes"])
            // The provider's console, as it were: tidekeeper rotates a new
            // server's host key, and the tests still get in to look.
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg(format!("{user}@{}", h.address))
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ssh")
    }
}

fn wait_port(addr: Ipv4Addr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let sa = SocketAddr::from((addr, 22));
    while TcpStream::connect_timeout(&sa, Duration::from_millis(300)).is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Serve `app` on 127.0.0.1 from a runtime of its own; the base URL.
pub fn serve(app: axum::Router) -> (String, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}"), handle)
}

/// RFC 3339 time, as both APIs write it (Hetzner) or epoch seconds (AWS).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// tidekeeper.yaml with `providers.hetzner` and `providers.lightsail` given
/// the emulators' endpoints and short timeouts (inserted under those keys).
pub fn point_at(settings: &str, hetzner: &str, lightsail: &str) -> String {
    let mut out = String::new();
    for line in settings.lines() {
        match line.trim_end() {
            "  hetzner: {}" => {
                out.push_str(&format!(
                    "  hetzner:\n    endpoint: {hetzner}\n    timeout: 5s\n"
                ));
                continue;
            }
            "  hetzner:" => {
                out.push_str(&format!(
                    "{line}\n    endpoint: {hetzner}\n    timeout: 5s\n"
                ));
                continue;
            }
            "  lightsail:" => {
                out.push_str(&format!(
                    "{line}\n    endpoint: {lightsail}\n    timeout: 5s\n"
                ));
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// tidekeeper.yaml with `providers.ec2` given the EC2 emulator's endpoint
/// and a short timeout (inserted under that key).
pub fn point_ec2_at(settings: &str, ec2: &str) -> String {
    let mut out = String::new();
    for line in settings.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_end() == "  ec2:" {
            out.push_str(&format!("    endpoint: {ec2}\n    timeout: 5s\n"));
        }
    }
    out
}

/// The emulators on one test fleet, and a config repo pointed at them.
pub struct CloudFleet {
    pub cloud: Cloud,
    pub hetzner: hetzner::Hetzner,
    pub lightsail: lightsail::Lightsail,
    pub ec2: ec2::Ec2,
    pub repo: FleetRepo,
}

/// The environment tidekeeper reads the emulators' credentials from.
pub const CREDENTIALS: [(&str, &str); 3] = [
    ("HCLOUD_TOKEN", hetzner::TOKEN),
    ("AWS_ACCESS_KEY_ID", lightsail::ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", lightsail::SECRET_KEY),
];

impl Drop for CloudFleet {
    /// The emulators live on (their threads hold the fleet), so the test
    /// fleet is shut down here, not when its last holder goes.
    fn drop(&mut self) {
        self.cloud
            .bed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown();
    }
}

impl CloudFleet {
    /// Emulators on an empty account, and a repo of `files` (hosts, roles)
    /// whose tidekeeper.yaml (fleet `acme`) points at them; `extra` is added
    /// to tidekeeper.yaml.
    pub fn start(files: &[(&str, &str)], extra: &str) -> CloudFleet {
        let settings = format!(
            "fleet: acme\ndefaults:\n  parallelism: 4\n  ssh: {{from: [10.213.0.0/16]}}\nproviders:\n  hetzner: {{}}\n  lightsail:\n    region: {}\n{extra}",
            lightsail::REGION,
        );
        let mut all: Vec<(String, String)> = vec![("tidekeeper.yaml".into(), settings)];
        all.extend(files.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        Self::with_repo(Kind::Full, all)
    }

    /// Emulators, servers of `kind`, and a repo of `files` whose
    /// tidekeeper.yaml's `providers:` are pointed at the emulators.
    pub fn with_repo(kind: Kind, files: Vec<(String, String)>) -> CloudFleet {
        Self::with_files_from(kind, 0, |_, hetzner, lightsail, ec2| {
            let mut files = files;
            for (path, text) in files.iter_mut() {
                if path == "tidekeeper.yaml" {
                    *text = point_ec2_at(&point_at(text, hetzner, lightsail), ec2);
                }
            }
            files
        })
    }

    /// Emulators, servers of `kind`, `plain` ordinary test hosts (hosts
    /// 0.., for what stands beside the cloud, such as a backup server), and
    /// a repo of the files `make` returns, as it returns them, given the
    /// cloud and the Hetzner, Lightsail and EC2 emulators' URLs.
    pub fn with_files_from(
        kind: Kind,
        plain: usize,
        make: impl FnOnce(&Cloud, &str, &str, &str) -> Vec<(String, String)>,
    ) -> CloudFleet {
        let cloud = Cloud::with_kind(plain, kind);
        let hetzner = hetzner::Hetzner::start(cloud.clone());
        let lightsail = lightsail::Lightsail::start(cloud.clone());
        let ec2 = ec2::Ec2::start(cloud.clone());
        let key = cloud.bed.lock().unwrap().key.clone();
        let files = make(&cloud, &hetzner.url, &lightsail.url, &ec2.url);
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let repo = FleetRepo::with_files(key, &refs);
        CloudFleet {
            cloud,
            hetzner,
            lightsail,
            ec2,
            repo,
        }
    }

    /// `tidekeeper ARGS` on the repo, with the emulators' credentials.
    pub fn tk(&self, args: &[&str]) -> std::process::Output {
        self.repo.tk_env(args, &CREDENTIALS)
    }

    /// `tidekeeper import ARGS` on the repo: no SSH key, as it only talks
    /// to the provider.
    pub fn import(&self, args: &[&str]) -> std::process::Output {
        crate::support::tidekeeper()
            .arg("import")
            .args(args)
            .arg("--repo")
            .arg(&self.repo.path)
            .envs(CREDENTIALS)
            .output()
            .unwrap()
    }

    /// The test host behind the server or instance named `name`.
    pub fn host_of(&self, name: &str) -> usize {
        self.hetzner
            .server(name)
            .and_then(|s| s.host)
            .or_else(|| self.lightsail.instance_for(name).and_then(|i| i.host))
            .or_else(|| self.ec2.instance_for(name).and_then(|i| i.host))
            .unwrap_or_else(|| panic!("no booted server named {name}"))
    }

    /// Run `command` as root on the server `name`; its stdout (must succeed).
    #[track_caller]
    pub fn ssh(&self, name: &str, command: &str) -> String {
        let key = self.repo.key.clone();
        let out = self.cloud.ssh(self.host_of(name), &key, command);
        assert!(
            out.status.success(),
            "{command:?} on {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// One inbound rule of a cloud firewall (Hetzner rules, Lightsail public
/// ports), as the emulators enforce it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRule {
    /// `tcp`, `udp`, `icmp` or `any`.
    pub proto: String,
    /// None: every port.
    pub ports: Option<(u16, u16)>,
    pub from: Vec<String>,
}

/// The nftables script that makes a host's public interface (eth0) admit
/// only `rules` (None: no firewall, everything admitted), as the provider's
/// firewall in front of a server does. Private networks are not filtered.
pub fn cloud_firewall_nft(rules: Option<&[PortRule]>) -> String {
    let mut s = String::from("table inet cloud_fw\ndelete table inet cloud_fw\n");
    let Some(rules) = rules else { return s };
    s.push_str("table inet cloud_fw {\n chain input {\n  type filter hook input priority -20; policy accept;\n");
    s.push_str("  iifname != \"eth0\" accept\n  ct state established,related accept\n");
    s.push_str(&nft_accepts(rules, "saddr"));
    s.push_str("  drop\n }\n}\n");
    s
}

/// The nftables script that lets a host's public interface send only what
/// `rules` allow (their `from` are destinations; None: everything), as an
/// EC2 security group's outbound rules do. Replies are always let out.
pub fn cloud_egress_nft(rules: Option<&[PortRule]>) -> String {
    let mut s = String::from("table inet cloud_fw_out\ndelete table inet cloud_fw_out\n");
    let Some(rules) = rules else { return s };
    s.push_str("table inet cloud_fw_out {\n chain output {\n  type filter hook output priority -20; policy accept;\n");
    s.push_str("  oifname != \"eth0\" accept\n  ct state established,related accept\n");
    s.push_str(&nft_accepts(rules, "daddr"));
    s.push_str("  drop\n }\n}\n");
    s
}

/// One `accept` line per rule and address family; `dir` is `saddr` or `daddr`.
fn nft_accepts(rules: &[PortRule], dir: &str) -> String {
    let mut s = String::new();
    for r in rules {
        let l4 = match (r.proto.as_str(), r.ports) {
            ("tcp" | "udp", Some((a, b))) if a == b => format!("{} dport {a}", r.proto),
            ("tcp" | "udp", Some((a, b))) => format!("{} dport {a}-{b}", r.proto),
            ("tcp" | "udp", None) => format!("meta l4proto {}", r.proto),
            ("icmp", _) => "meta l4proto { icmp, ipv6-icmp }".into(),
            _ => String::new(),
        };
        let (v4, v6): (Vec<&String>, Vec<&String>) = r.from.iter().partition(|c| !c.contains(':'));
        for (family, nets) in [("ip", v4), ("ip6", v6)] {
            if nets.is_empty() {
                continue;
            }
            let set: Vec<&str> = nets.iter().map(|n| n.as_str()).collect();
            s.push_str(&format!(
                "  {family} {dir} {{ {} }} {l4} accept\n",
                set.join(", ")
            ));
        }
    }
    s
}

/// Apply what `wanted` says (host index → script), computed once what was
/// last applied is locked, where it differs from that.
pub fn enforce_firewalls(
    cloud: &Cloud,
    applied: &Mutex<std::collections::HashMap<usize, String>>,
    wanted: impl FnOnce() -> Vec<(usize, String)>,
) {
    let mut done = applied.lock().unwrap_or_else(|e| e.into_inner());
    for (host, script) in wanted() {
        if done.get(&host) == Some(&script) {
            continue;
        }
        cloud.bed.lock().unwrap().nft(host, &script);
        done.insert(host, script);
    }
}
