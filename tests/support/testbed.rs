//! The test fleet: real Debian hosts with systemd and OpenSSH, each booted
//! with `systemd-nspawn --boot` in its own network namespace, on its own
//! overlay over a cached base image (see `testbed/build-image`).
//!
//! ```ignore
//! let bed = Testbed::start(2);
//! let out = bed.ssh(0, "systemctl is-system-running");
//! ```
//!
//! Addresses come from 10.213.0.0/16, a /30 per host: slot `n` has the
//! controller side at `.4n+1` and the host at `.4n+2`. Slots are claimed with
//! a lock file, so test processes running side by side never collide, and a
//! slot left over by a killed process is cleaned up when it is claimed again.
//! Hosts route only to 10.213.0.0/16 (each other, through the controller
//! side); they have no default route and never reach anything else.
//!
//! Dropping the [`Testbed`] (also while a test panics) kills the hosts and
//! removes their namespaces, links, mounts and files.

#![allow(dead_code)]

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const STATE: &str = "/run/tidekeeper-testbed";
const SLOTS: u32 = 16_000;
/// nspawn's exit status when the container asked for a reboot.
const NSPAWN_REBOOT: i32 = 133;

pub fn cache_dir() -> PathBuf {
    std::env::var_os("TESTBED_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tidekeeper-testbed"))
}

/// The base image (Debian 12), built on first use (or by scripts/setup ahead of time).
pub fn image() -> PathBuf {
    image_of("bookworm")
}

/// The base image of a Debian suite (`bookworm`, `trixie`) for this machine's architecture.
pub fn image_of(suite: &str) -> PathBuf {
    image_for(suite, None)
}

/// The base image of a suite for an architecture (`arm64`; None: this machine's).
pub fn image_for(suite: &str, arch: Option<&str>) -> PathBuf {
    type Built = Vec<((String, Option<String>), PathBuf)>;
    static IMAGES: Mutex<Built> = Mutex::new(Vec::new());
    let key = (suite.to_string(), arch.map(str::to_string));
    let mut guard = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = guard.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testbed/build-image");
    let mut cmd = Command::new(script);
    cmd.env("TESTBED_SUITE", suite);
    if let Some(arch) = arch {
        cmd.env("TESTBED_ARCH", arch);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run testbed/build-image");
    assert!(
        out.status.success(),
        "testbed/build-image ({suite} {arch:?}) failed; run scripts/setup as root"
    );
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    guard.push((key, p.clone()));
    p
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

#[track_caller]
fn must(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A claimed /30 of 10.213.0.0/16, held by a lock on a file.
struct Slot {
    n: u32,
    _lock: File,
}

impl Slot {
    fn claim() -> Slot {
        fs::create_dir_all(format!("{STATE}/slots")).unwrap();
        // Start at a pseudo-random slot so parallel processes rarely contend.
        let start = (std::process::id().wrapping_mul(2654435761)
            ^ Instant::now().elapsed().subsec_nanos())
            % SLOTS;
        for i in 0..SLOTS {
            let n = (start + i) % SLOTS;
            let f = File::create(format!("{STATE}/slots/{n}.lock")).unwrap();
            if f.try_lock().is_ok() {
                let slot = Slot { n, _lock: f };
                slot.clean_leftovers();
                return slot;
            }
        }
        panic!("no free testbed slot in 10.213.0.0/16");
    }
    fn netns(&self) -> String {
        format!("tk{}", self.n)
    }
    fn link(&self) -> String {
        format!("tk{}h", self.n)
    }
    fn gateway(&self) -> Ipv4Addr {
        let b = self.n * 4 + 1;
        Ipv4Addr::new(10, 213, (b >> 8) as u8, (b & 255) as u8)
    }
    fn address(&self) -> Ipv4Addr {
        let b = self.n * 4 + 2;
        Ipv4Addr::new(10, 213, (b >> 8) as u8, (b & 255) as u8)
    }
    fn dir(&self) -> PathBuf {
        cache_dir().join("slots").join(self.n.to_string())
    }

    /// Remove what a killed process may have left in this slot.
    fn clean_leftovers(&self) {
        kill_netns_processes(&self.netns());
        let merged = self.dir().join("merged");
        if is_mounted(&merged) {
            let _ = run("umount", &["-l", merged.to_str().unwrap()]);
        }
        let _ = run("ip", &["link", "del", &self.link()]);
        let _ = run("ip", &["netns", "del", &self.netns()]);
        let _ = fs::remove_dir_all(self.dir());
    }

    fn network_up(&self) {
        let (ns, link, peer) = (self.netns(), self.link(), format!("tk{}c", self.n));
        let gw = format!("{}/30", self.gateway());
        let addr = format!("{}/30", self.address());
        must("ip", &["netns", "add", &ns]);
        must(
            "ip",
            &["link", "add", &link, "type", "veth", "peer", "name", &peer],
        );
        must("ip", &["link", "set", &peer, "netns", &ns]);
        must("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"]);
        must("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        must("ip", &["addr", "add", &gw, "dev", &link]);
        must("ip", &["link", "set", &link, "up"]);
        // Only the test network is routable from a host: hosts reach each other, nothing else.
        must(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "10.213.0.0/16",
                "via",
                &self.gateway().to_string(),
            ],
        );
        let _ = fs::write(format!("/proc/sys/net/ipv4/conf/{link}/forwarding"), "1");
    }
}

fn kill_netns_processes(ns: &str) {
    let out = run("ip", &["netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) on a PID found in our own test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// systemd as PID 1, sshd as a unit: a real server.
    Full,
    /// sshd alone over a shared read-only base (a throwaway tmpfs overlay), for scale tests.
    Light,
    /// A full host that can run dockerd (all capabilities, /proc/sys and the
    /// cgroup controllers writable); see docs/testing.md.
    Docker,
    /// A full host running Debian 13 (trixie): systemd 257, OpenSSH 10.
    Trixie,
    /// A Debian 13 host that can run dockerd, as [`Kind::Docker`].
    TrixieDocker,
    /// A full Debian 12 host for arm64 (Hetzner CAX, Lightsail ARM bundles):
    /// every program in it runs under qemu-user-static, so it is slow.
    Arm64,
}

impl Kind {
    pub fn image(self) -> PathBuf {
        match self {
            Kind::Trixie | Kind::TrixieDocker => image_of("trixie"),
            Kind::Arm64 => image_for("bookworm", Some("arm64")),
            _ => image(),
        }
    }
}

struct Process {
    child: Option<Child>,
    stopping: bool,
}

/// One test host.
pub struct TestHost {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// The host's public SSH host key, `ssh-ed25519 AAAA…`.
    pub host_key: String,
    pub kind: Kind,
    /// Who logs in with the keys: root, or a cloud image's default user.
    pub login: String,
    slot: Slot,
    launch: Launch,
    process: Arc<Mutex<Process>>,
    supervisor: Option<thread::JoinHandle<()>>,
}

/// What a cloud server's user data gives it, as the test fleet reads it.
#[derive(Debug, Clone, Default)]
pub struct CloudInit {
    /// (OpenSSH private key, `ssh-ed25519 AAAA…`) from `ssh_keys`.
    pub host_key: Option<(String, String)>,
    /// `ssh_authorized_keys`, plus the provider's own SSH keys.
    pub authorized: Vec<String>,
    /// `text/x-shellscript` parts, run once at first boot.
    pub scripts: Vec<String>,
    /// A disk to start from (see [`Testbed::snapshot_disk`]), as a server
    /// made from a snapshot does; None: the image as it is.
    pub disk: Option<PathBuf>,
    /// The image's default user, who gets the keys and passwordless sudo
    /// (`admin` on Debian's cloud images); None: root, as on Hetzner.
    /// Root's keys then only print "Please login as the user …" and exit
    /// 142, as cloud-init's `disable_root` writes them.
    pub login: Option<String>,
}

/// Everything needed to (re)start a host's container.
#[derive(Clone)]
struct Launch {
    name: String,
    kind: Kind,
    netns: String,
    dir: PathBuf,
    image: PathBuf,
    /// Machine directories bound into the host: (source, path inside).
    binds: Vec<(PathBuf, String)>,
}

impl Launch {
    fn log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--quiet")
            .arg(format!("--machine={}", self.name))
            .arg("--register=no")
            .arg("--keep-unit")
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.netns
            ));
        match self.kind {
            Kind::Docker | Kind::TrixieDocker => {
                cmd.arg("--directory")
                    .arg(self.dir.join("merged"))
                    .arg("--capability=all")
                    .arg("--system-call-filter=@keyring bpf")
                    .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "1")
                    .arg("--boot");
            }
            Kind::Full | Kind::Trixie | Kind::Arm64 => {
                // CAP_NET_ADMIN: the host has its own network namespace, so
                // ufw/iptables and net.* sysctls inside it touch only that.
                cmd.arg("--directory")
                    .arg(self.dir.join("merged"))
                    .arg("--capability=CAP_NET_ADMIN")
                    .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
                    .arg("--boot");
            }
            Kind::Light => {
                cmd.arg("--directory")
                    .arg(self.image.join("rootfs"))
                    .arg("--volatile=overlay")
                    .arg(format!("--hostname={}", self.name))
                    .arg(format!("--bind-ro={}:/etc/tk", self.dir.join("keys").display()))
                    .arg("--as-pid2")
                    .args(["/bin/sh", "-c"])
                    .arg("mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -o StrictModes=no -o AuthorizedKeysFile=/etc/tk/authorized_keys -h /etc/tk/ssh_host_ed25519_key");
            }
        }
        for (from, to) in &self.binds {
            cmd.arg(format!("--bind={}:{to}", from.display()));
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }
}

/// The names a host holds on the machine, for checking teardown.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub netns: String,
    pub link: String,
    pub dir: PathBuf,
    pub pids: Vec<i32>,
}

impl TestHost {
    pub fn footprint(&self) -> Footprint {
        let out = run("ip", &["netns", "pids", &self.slot.netns()]);
        Footprint {
            netns: self.slot.netns(),
            link: self.slot.link(),
            dir: self.slot.dir(),
            pids: String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
        }
    }

    /// A pinned known_hosts line for this host.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.address, self.host_key)
    }

    /// The nspawn log (the container's console), for debugging.
    pub fn log(&self) -> String {
        fs::read_to_string(self.launch.log()).unwrap_or_default()
    }
}

pub struct Testbed {
    pub hosts: Vec<TestHost>,
    dir: PathBuf,
    /// Private key that logs in as root on every host.
    pub key: PathBuf,
    pub public_key: String,
    pub known_hosts: PathBuf,
    closed: bool,
    /// Private networks made by [`Testbed::network_attach`]: their namespaces.
    networks: Vec<String>,
}

impl Testbed {
    /// Boot `n` full hosts (systemd + sshd) and wait until each is `running`.
    pub fn start(n: usize) -> Testbed {
        Self::start_kind(n, Kind::Full)
    }

    /// Start `n` lightweight hosts (sshd only).
    pub fn start_light(n: usize) -> Testbed {
        Self::start_kind(n, Kind::Light)
    }

    pub fn start_kind(n: usize, kind: Kind) -> Testbed {
        Self::start_binding(n, kind, &[])
    }

    /// Like [`Testbed::start_kind`], with machine directories bound into
    /// every host: (source, path inside); what the hosts write there outlives
    /// them (a cache kept between runs).
    pub fn start_binding(n: usize, kind: Kind, binds: &[(PathBuf, &str)]) -> Testbed {
        let binds: Vec<(PathBuf, String)> = binds
            .iter()
            .map(|(from, to)| (from.clone(), to.to_string()))
            .collect();
        room_for_neighbours(n);
        let image = kind.image();
        let dir = cache_dir().join(format!("run-{}-{}", std::process::id(), unique()));
        // A killed run with the same pid may have left its key here: ssh-keygen
        // would ask whether to overwrite it.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id_ed25519");
        must(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "tidekeeper-testbed",
                "-f",
                key.to_str().unwrap(),
            ],
        );
        let public_key = fs::read_to_string(dir.join("id_ed25519.pub"))
            .unwrap()
            .trim()
            .to_string();
        let mut bed = Testbed {
            hosts: Vec::new(),
            closed: false,
            networks: Vec::new(),
            known_hosts: dir.join("known_hosts"),
            dir,
            key,
            public_key,
        };
        // Prepare in parallel; keep every host that was set up, so a failure
        // part-way still tears all of them down (through Drop).
        let prepared: Vec<std::thread::Result<TestHost>> = parallel(n, |i| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bed.prepare(&image, i, kind, None, &binds)
            }))
        });
        let mut failure = None;
        for r in prepared {
            match r {
                Ok(h) => bed.hosts.push(h),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            std::panic::resume_unwind(e);
        }
        let lines: Vec<String> = bed.hosts.iter().map(|h| h.known_hosts_line()).collect();
        fs::write(&bed.known_hosts, lines.join("\n") + "\n").unwrap();
        for i in 0..n {
            bed.spawn(i);
        }
        // Emulated hosts boot several times slower.
        let boot = if kind == Kind::Arm64 { 600 } else { 90 };
        parallel(n, |i| bed.wait_ready(i, Duration::from_secs(boot)));
        bed
    }

    /// Set up slot, network, file system and keys of host `i`; not started yet.
    /// A host for a cloud server takes its host key and login keys from
    /// `cloud` (its cloud-init), as a real server's cloud-init would.
    fn prepare(
        &self,
        image: &Path,
        i: usize,
        kind: Kind,
        cloud: Option<&CloudInit>,
        binds: &[(PathBuf, String)],
    ) -> TestHost {
        let slot = Slot::claim();
        let name = format!("host{i}-{}", slot.n);
        let sdir = slot.dir();
        fs::create_dir_all(&sdir).unwrap();
        slot.network_up();
        let keys = sdir.join("keys");
        fs::create_dir_all(&keys).unwrap();
        let hk = keys.join("ssh_host_ed25519_key");
        match cloud.and_then(|c| c.host_key.as_ref()) {
            Some((private, public)) => {
                fs::write(&hk, private).unwrap();
                fs::set_permissions(&hk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
                fs::write(keys.join("ssh_host_ed25519_key.pub"), format!("{public}\n")).unwrap();
            }
            None => must(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    &format!("root@{name}"),
                    "-f",
                    hk.to_str().unwrap(),
                ],
            ),
        }
        let pubkey = fs::read_to_string(keys.join("ssh_host_ed25519_key.pub")).unwrap();
        let authorized = match cloud {
            Some(c) => c.authorized.join("\n") + "\n",
            None => format!("{}\n", self.public_key),
        };
        let host_key = pubkey
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        fs::write(keys.join("authorized_keys"), &authorized).unwrap();
        if kind != Kind::Light {
            let (upper, work, merged) =
                (sdir.join("upper"), sdir.join("work"), sdir.join("merged"));
            for d in [&upper, &work, &merged] {
                fs::create_dir_all(d).unwrap();
            }
            if let Some(disk) = cloud.and_then(|c| c.disk.as_ref()) {
                // Whiteouts and the overlay's xattrs come along: the copy is the disk as it was.
                must(
                    "cp",
                    &[
                        "-a",
                        &format!("{}/.", disk.display()),
                        upper.to_str().unwrap(),
                    ],
                );
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.join("rootfs").display(),
                upper.display(),
                work.display()
            );
            must(
                "mount",
                &[
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    &opts,
                    merged.to_str().unwrap(),
                ],
            );
            let write = |rel: &str, text: &str, mode: u32| {
                use std::os::unix::fs::PermissionsExt;
                let p = merged.join(rel);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, text).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            };
            write("etc/hostname", &format!("{name}\n"), 0o644);
            if kind == Kind::TrixieDocker {
                // With every capability, systemd 257 tries to load kernel
                // modules, which a container cannot: masked, as on a VM without them.
                let _ = std::os::unix::fs::symlink(
                    "/dev/null",
                    merged.join("etc/systemd/system/systemd-modules-load.service"),
                );
            }
            if matches!(kind, Kind::Docker | Kind::TrixieDocker) {
                // nspawn mounts the cgroup v1 controllers read-only; dockerd
                // needs them writable (see docs/testing.md). Done at boot.
                write(
                    "etc/systemd/system/tk-cgroups-rw.service",
                    "[Unit]\nDescription=Writable cgroup controllers for dockerd (test fleet)\nBefore=docker.service\n\
                     [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*/; do d=$${d%%/}; \
                     [ -L \"$$d\" ] && continue; n=$$(basename $$d); case $$n in systemd|unified) continue;; esac; \
                     mount -o remount,rw \"$$d\" 2>/dev/null || { umount -l \"$$d\" && mount -t cgroup -o \"$$n\" cgroup \"$$d\"; }; done; true'\n\
                     [Install]\nWantedBy=multi-user.target\n",
                    0o644,
                );
                if kind == Kind::Docker {
                    runsc_in_a_container(&merged);
                }
                let wants = merged.join("etc/systemd/system/multi-user.target.wants");
                fs::create_dir_all(&wants).unwrap();
                let _ = std::os::unix::fs::symlink(
                    "/etc/systemd/system/tk-cgroups-rw.service",
                    wants.join("tk-cgroups-rw.service"),
                );
            }
            write(
                "etc/hosts",
                &format!("127.0.0.1 localhost\n{} {name}\n", slot.address()),
                0o644,
            );
            write(
                "etc/machine-id",
                &format!("{:032x}\n", machine_id(slot.n)),
                0o444,
            );
            write(
                "etc/ssh/ssh_host_ed25519_key",
                &fs::read_to_string(&hk).unwrap(),
                0o600,
            );
            write("etc/ssh/ssh_host_ed25519_key.pub", &pubkey, 0o644);
            match cloud.and_then(|c| c.login.as_deref()) {
                Some(user) if user != "root" => default_user(&merged, user, &authorized),
                _ => write("root/.ssh/authorized_keys", &authorized, 0o600),
            }
            // Hosts made for cloud servers run their user data's scripts on first boot.
            for (n, script) in cloud
                .map(|c| c.scripts.as_slice())
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                write(
                    &format!("var/lib/cloud/scripts/per-instance/{n:02}-user-data"),
                    script,
                    0o755,
                );
            }
            if cloud.is_some_and(|c| !c.scripts.is_empty()) {
                write(
                    "etc/systemd/system/cloud-user-scripts.service",
                    "[Unit]\nDescription=Run the user data scripts (cloud-init, emulated)\nAfter=network.target\n\
                     [Service]\nType=oneshot\nExecStart=/bin/sh -c 'for s in /var/lib/cloud/scripts/per-instance/*; do \"$s\"; done'\nRemainAfterExit=yes\n\
                     [Install]\nWantedBy=multi-user.target\n",
                    0o644,
                );
                let wants = merged.join("etc/systemd/system/multi-user.target.wants");
                fs::create_dir_all(&wants).unwrap();
                let _ = std::os::unix::fs::symlink(
                    "/etc/systemd/system/cloud-user-scripts.service",
                    wants.join("cloud-user-scripts.service"),
                );
            }
            fs::set_permissions(
                merged.join("root/.ssh"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .unwrap();
        }
        let launch = Launch {
            name: name.clone(),
            kind,
            netns: slot.netns(),
            dir: sdir,
            image: image.to_path_buf(),
            binds: binds.to_vec(),
        };
        TestHost {
            name,
            address: slot.address(),
            port: 22,
            host_key,
            kind,
            login: cloud
                .and_then(|c| c.login.clone())
                .unwrap_or_else(|| "root".into()),
            slot,
            launch,
            process: Arc::new(Mutex::new(Process {
                child: None,
                stopping: false,
            })),
            supervisor: None,
        }
    }

    /// Start host `i`'s container, and a supervisor that brings it back after a reboot.
    fn spawn(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        let child = host.launch.command().spawn().expect("start systemd-nspawn");
        host.process.lock().unwrap().child = Some(child);
        let (process, launch) = (host.process.clone(), host.launch.clone());
        host.supervisor = Some(thread::spawn(move || supervise(process, launch)));
    }

    /// Wait until host `i` accepts SSH and (for full hosts) systemd says `running`.
    pub fn wait_ready(&self, i: usize, timeout: Duration) {
        let host = &self.hosts[i];
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((host.address, host.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
            assert!(
                Instant::now() < deadline,
                "host {} did not open SSH in {timeout:?}; console:\n{}",
                host.name,
                host.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        if host.kind != Kind::Light {
            let mut retried = false;
            loop {
                let out = self.ssh(i, "systemctl is-system-running --wait");
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" {
                    break;
                }
                if state == "degraded" && !retried {
                    // Under a parallel boot on two cores a oneshot unit can
                    // time out; start it once more before calling it a failure.
                    retried = true;
                    let out = self.ssh(
                        i,
                        "failed=$(systemctl --failed --plain --no-legend | awk '{print $1}'); \
                         journalctl -b --no-pager -n 20 $(printf -- '-u %s ' $failed) >&2; \
                         systemctl reset-failed; systemctl restart $failed",
                    );
                    eprintln!(
                        "testbed: host {} booted degraded; restarted failed units:\n{}",
                        host.name,
                        String::from_utf8_lossy(&out.stderr)
                    );
                    continue;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {} is {state:?}, not running; failed units:\n{}",
                    host.name,
                    String::from_utf8_lossy(&self.ssh(i, "systemctl --failed --no-legend").stdout)
                );
                thread::sleep(Duration::from_millis(200));
            }
        } else {
            while !self.ssh(i, "true").status.success() {
                assert!(
                    Instant::now() < deadline,
                    "host {} does not accept logins",
                    host.name
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn host(&self, i: usize) -> &TestHost {
        &self.hosts[i]
    }

    /// Host `i`'s root file system as this machine sees it (full hosts: an
    /// overlay mounted here), to put files in without copying over SSH.
    /// The network namespace host `i` lives in.
    pub fn netns(&self, i: usize) -> String {
        self.hosts[i].slot.netns()
    }

    /// The address host `i`'s packets from this machine come from (its
    /// link's controller side), as the host's sshd logs them.
    pub fn controller_address(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].slot.gateway()
    }

    /// Let only `sources` reach TCP `port` of host `i`; anyone else is
    /// refused (a TCP reset). nftables in the host's network namespace,
    /// outside the host's own control, as a provider's firewall is. An empty
    /// `sources` shuts the port; calling again replaces the rule.
    pub fn restrict_port(&self, i: usize, port: u16, sources: &[Ipv4Addr]) {
        let allow = if sources.is_empty() {
            String::new()
        } else {
            let set: Vec<String> = sources.iter().map(|a| a.to_string()).collect();
            format!(
                "tcp dport {port} ip saddr {{ {} }} accept\n",
                set.join(", ")
            )
        };
        let rules = format!(
            "table inet testbed_fw\ndelete table inet testbed_fw\n\
             table inet testbed_fw {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n  \
             {allow}  tcp dport {port} reject with tcp reset\n }}\n}}\n"
        );
        self.nft(i, &rules);
    }

    /// Load an nftables script in host `i`'s network namespace (outside the
    /// host's own control: the host's ufw keeps tables of its own).
    pub fn nft(&self, i: usize, rules: &str) {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i].slot.netns(),
                "nft",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft (scripts/setup installs nftables)");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn root(&self, i: usize) -> PathBuf {
        assert!(
            self.hosts[i].kind != Kind::Light,
            "light hosts share a read-only base"
        );
        self.hosts[i].launch.dir.join("merged")
    }

    /// Run `command` on host `i` as root with the system ssh client, host key pinned.
    pub fn ssh(&self, i: usize, command: &str) -> Output {
        let h = &self.hosts[i];
        Command::new("ssh")
            .args(["-i", self.key.to_str().unwrap()])
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .args([
                "-o",
                &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            ])
            .args([
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &h.port.to_string(),
            ])
            .arg(format!("root@{}", h.address))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    /// Like [`Testbed::ssh`], panicking unless the command succeeds; returns stdout.
    #[track_caller]
    pub fn ssh_ok(&self, i: usize, command: &str) -> String {
        let out = self.ssh(i, command);
        assert!(
            out.status.success(),
            "{command:?} on {} failed: {}{}",
            self.hosts[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reboot host `i` from inside and wait until it is back.
    pub fn reboot(&self, i: usize) {
        let before = self.boot_id(i);
        let _ = self.ssh(i, "systemctl reboot");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            thread::sleep(Duration::from_millis(300));
            let out = self.ssh(i, "cat /proc/sys/kernel/random/boot_id");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "host {} did not come back from reboot",
                self.hosts[i].name
            );
        }
        self.wait_ready(i, Duration::from_secs(60));
    }

    /// An identifier of the current boot of host `i` (its init's start, seen from outside).
    pub fn boot_id(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.ssh(i, "cat /proc/sys/kernel/random/boot_id").stdout)
            .trim()
            .to_string()
    }

    /// Take host `i`'s link down: it stays up but is unreachable.
    pub fn cut_off(&self, i: usize) {
        // With its link down, a host's /30 route goes; without this, packets
        // for it would follow the default route off the machine. Connected
        // routes are more specific, so hosts that are up are unaffected, and
        // a host cut off answers "no route to host" at once.
        must("ip", &["route", "replace", "unreachable", "10.213.0.0/16"]);
        must("ip", &["link", "set", &self.hosts[i].slot.link(), "down"]);
    }

    pub fn reconnect(&self, i: usize) {
        must("ip", &["link", "set", &self.hosts[i].slot.link(), "up"]);
    }

    /// Kill host `i` without a shutdown, as a power cut would. It stays down.
    pub fn crash(&self, i: usize) {
        let host = &self.hosts[i];
        host.process.lock().unwrap().stopping = true;
        kill_netns_processes(&host.slot.netns());
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Boot one more host (full, or Docker-capable), for a cloud server; its index. The host's
    /// keys come from `cloud`; the bed's own key is not authorized on it.
    pub fn add_cloud_host(&mut self, kind: Kind, cloud: &CloudInit) -> usize {
        assert!(!self.closed, "the test fleet is shut down");
        let i = self.hosts.len();
        let host = self.prepare(&kind.image(), i, kind, Some(cloud), &[]);
        let line = host.known_hosts_line();
        self.hosts.push(host);
        let mut known = fs::read_to_string(&self.known_hosts).unwrap_or_default();
        known.push_str(&line);
        known.push('\n');
        fs::write(&self.known_hosts, known).unwrap();
        self.spawn(i);
        i
    }

    /// A copy of host `i`'s disk as it is now (what differs from its
    /// image), kept until the bed shuts down: a snapshot to boot others from.
    pub fn snapshot_disk(&self, i: usize) -> PathBuf {
        let to = self.dir.join("disks").join(unique().to_string());
        fs::create_dir_all(&to).unwrap();
        let upper = self.hosts[i].slot.dir().join("upper");
        must(
            "cp",
            &[
                "-a",
                &format!("{}/.", upper.display()),
                to.to_str().unwrap(),
            ],
        );
        to
    }

    /// Power host `i` off (its processes end, as at a power cut; the disk stays).
    pub fn power_off(&self, i: usize) {
        let host = &self.hosts[i];
        host.process.lock().unwrap().stopping = true;
        kill_netns_processes(&host.slot.netns());
        let child = host.process.lock().unwrap().child.take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Power host `i` on again after [`Testbed::power_off`].
    pub fn power_on(&mut self, i: usize) {
        if let Some(s) = self.hosts[i].supervisor.take() {
            let _ = s.join();
        }
        self.hosts[i].process.lock().unwrap().stopping = false;
        self.spawn(i);
    }

    /// Remove host `i` for good (a deleted server): stopped, its slot freed.
    /// Its index stays taken.
    pub fn remove(&mut self, i: usize) {
        self.power_off(i);
        if let Some(s) = self.hosts[i].supervisor.take() {
            let _ = s.join();
        }
        self.hosts[i].slot.clean_leftovers();
    }
}

/// Wait on the container; restart it when it exits for a reboot.
fn supervise(process: Arc<Mutex<Process>>, launch: Launch) {
    loop {
        let child = process.lock().unwrap().child.take();
        let Some(mut child) = child else { return };
        let status = child.wait();
        let mut p = process.lock().unwrap();
        let rebooting = matches!(&status, Ok(s) if s.code() == Some(NSPAWN_REBOOT));
        if p.stopping || !rebooting {
            return;
        }
        match launch.command().spawn() {
            Ok(c) => p.child = Some(c),
            Err(_) => return,
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Testbed {
    /// Kill every host and free what it held; idempotent. Hosts added
    /// afterwards are refused.
    pub fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if std::env::var_os("TESTBED_KEEP").is_some() {
            // Debugging: leave the hosts up. The next claim of their slots cleans them.
            eprintln!(
                "TESTBED_KEEP is set: leaving {} host(s) running. Log in with:",
                self.hosts.len()
            );
            for h in &self.hosts {
                eprintln!(
                    "  ssh -i {} -o UserKnownHostsFile={} root@{}    # {}, console log {}",
                    self.key.display(),
                    self.known_hosts.display(),
                    h.address,
                    h.name,
                    h.launch.log().display()
                );
            }
            // Keep the slot locks held (and the hosts) for as long as this process lives.
            std::mem::forget(std::mem::take(&mut self.hosts));
            return;
        }
        for host in &mut self.hosts {
            host.process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stopping = true;
            // Killing every process in the host's namespace ends its PID namespace, and nspawn with it.
            kill_netns_processes(&host.slot.netns());
            if let Some(child) = host
                .process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .child
                .as_mut()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(s) = host.supervisor.take() {
                let _ = s.join();
            }
        }
        for host in &self.hosts {
            host.slot.clean_leftovers();
        }
        for ns in std::mem::take(&mut self.networks) {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Each host is one neighbour (and its gateway one more) of this machine:
/// past the kernel's default `gc_thresh3` of 1024 entries new ones are
/// refused ("neighbor table overflow", then "No route to host"), so large
/// fleets raise the thresholds. Only ever raised, never lowered.
fn room_for_neighbours(hosts: usize) {
    if hosts <= 256 {
        return;
    }
    let want = 4 * hosts + 1024;
    for (name, share) in [("gc_thresh1", 4), ("gc_thresh2", 2), ("gc_thresh3", 1)] {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
        let now: usize = fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if now < want / share {
            let _ = fs::write(&path, (want / share).to_string());
        }
    }
}

/// A private network between test hosts (as a provider's private network):
/// a bridge in a namespace of its own, which this machine has no address
/// on, so only hosts attached to it reach each other there.
impl Testbed {
    /// A new, empty private network; its name for the other calls.
    pub fn network_create(&mut self) -> String {
        let ns = format!("tkn{}x{}", std::process::id(), unique());
        must("ip", &["netns", "add", &ns]);
        must("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &ns, "link", "set", "br0", "up"]);
        self.networks.push(ns.clone());
        ns
    }

    fn network_link(&self, net: &str, i: usize) -> (String, String) {
        let n = self.hosts[i].slot.n;
        let k = net.rsplit('x').next().unwrap_or("0");
        (format!("tkp{n}n{k}"), format!("tkq{n}n{k}"))
    }

    /// Attach host `i` to `net` with `address` (`10.0.0.2/24`), as `ifname`.
    pub fn network_attach(&self, net: &str, i: usize, address: &str, ifname: &str) {
        let (a, b) = self.network_link(net, i);
        let host_ns = self.hosts[i].slot.netns();
        must(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        );
        must("ip", &["link", "set", &a, "netns", &host_ns]);
        must("ip", &["-n", &host_ns, "link", "set", &a, "name", ifname]);
        must(
            "ip",
            &["-n", &host_ns, "addr", "add", address, "dev", ifname],
        );
        must("ip", &["-n", &host_ns, "link", "set", ifname, "up"]);
        must("ip", &["link", "set", &b, "netns", net]);
        must("ip", &["-n", net, "link", "set", &b, "master", "br0"]);
        must("ip", &["-n", net, "link", "set", &b, "up"]);
    }

    /// Detach host `i` from `net`.
    pub fn network_detach(&self, net: &str, i: usize) {
        let (_, b) = self.network_link(net, i);
        let _ = run("ip", &["-n", net, "link", "del", &b]);
    }

    /// Remove `net` (its hosts lose their link to it).
    pub fn network_remove(&mut self, net: &str) {
        let _ = run("ip", &["netns", "del", net]);
        self.networks.retain(|n| n != net);
    }
}

/// Run `f(0..n)` on up to 8 threads; results in index order.
fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..n.min(8) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = f(i);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every index ran"))
        .collect()
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Bookworm's runsc (a 2022 build) cannot set up its own network or cgroups
/// inside a test host, which is itself a container: it refuses to run "with
/// network enabled in root network namespace". The host's `/usr/bin/runsc`
/// is diverted (as `dpkg-divert --local` does, so installing the package
/// puts the real one beside it) to a wrapper adding the two flags a nested
/// runsc needs, so configurations that name `/usr/bin/runsc` run here as
/// written.
fn runsc_in_a_container(merged: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = merged.join("usr/bin/runsc");
    fs::write(
        &wrapper,
        "#!/bin/sh\n# Test host only: runsc nested in a container (tests/support/testbed.rs).\n\
         exec /usr/bin/runsc.distrib --network=host --ignore-cgroups \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    // Once: a host booted from another's disk has it already.
    let diversions = merged.join("var/lib/dpkg/diversions");
    let entry = "/usr/bin/runsc\n/usr/bin/runsc.distrib\n:\n";
    let now = fs::read_to_string(&diversions).unwrap_or_default();
    if !now.contains(entry) {
        fs::write(&diversions, format!("{now}{entry}")).unwrap();
    }
}

fn machine_id(n: u32) -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (t << 20) ^ u128::from(n) ^ 0x7a3c_0000_0000_0000_0000_0000_0000_0001
}

/// A cloud image's default user on the file system at `root`: uid 1000
/// with the keys and passwordless sudo (the file cloud-init writes); root's
/// keys refuse with the message cloud-init's `disable_root` gives.
fn default_user(root: &Path, user: &str, authorized: &str) {
    let append = |rel: &str, line: &str| {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join(rel))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    append(
        "etc/passwd",
        &format!("{user}:x:1000:1000:Debian:/home/{user}:/bin/bash"),
    );
    append("etc/group", &format!("{user}:x:1000:"));
    append("etc/shadow", &format!("{user}:*:20000:0:99999:7:::"));
    let ssh = root.join(format!("home/{user}/.ssh"));
    fs::create_dir_all(&ssh).unwrap();
    fs::write(ssh.join("authorized_keys"), authorized).unwrap();
    for p in [
        ssh.join("authorized_keys"),
        ssh.clone(),
        root.join(format!("home/{user}")),
    ] {
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    }
    fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let sudoers = root.join("etc/sudoers.d/90-cloud-init-users");
    fs::create_dir_all(sudoers.parent().unwrap()).unwrap();
    fs::write(
        &sudoers,
        format!("# Created by cloud-init v. 22.4.2\n\n# User rules for {user}\n{user} ALL=(ALL) NOPASSWD:ALL\n"),
    )
    .unwrap();
    fs::set_permissions(
        &sudoers,
        std::os::unix::fs::PermissionsExt::from_mode(0o440),
    )
    .unwrap();
    let refuse = format!(
        "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"{user}\\\" rather than the user \\\"root\\\".';echo;sleep 10;exit 142\" "
    );
    let root_keys: String = authorized
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|k| format!("{refuse}{k}\n"))
        .collect();
    let dir = root.join("root/.ssh");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("authorized_keys"), root_keys).unwrap();
    fs::set_permissions(
        dir.join("authorized_keys"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
}
