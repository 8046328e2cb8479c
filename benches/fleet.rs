//! Benchmark "fleet-200": 8 real hosts, each with 200 small files, 2 users
//! with keys, 1 systemd service and 1 package. Measures the `tidekeeper`
//! command end to end (process start, git, model, SSH, probe, plan, apply)
//! for a cold apply, a no-op plan and a one-changed-file apply, each next to
//! the floor measured in the same run: one SSH connection to every host in
//! parallel running `sha256sum` over the 200 files. Also the controller's
//! peak RSS. `cargo bench --bench fleet` (as root); results go in
//! docs/benchmarks.md.

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::fleet::{FleetRepo, text};
use support::testbed::Testbed;

const HOSTS: usize = 8;
const FILES: usize = 200;
const RUNS: usize = 5;
const COLD_RUNS: usize = 3;

fn role(version: &str, bed: &Testbed) -> String {
    let key = bed.public_key.trim();
    let mut s = String::from("packages:\n  present: [jq]\nusers:\n");
    for u in ["alice", "bob"] {
        s.push_str(&format!(
            "  - {{name: {u}, shell: /bin/bash, authorized_keys: [\"{key}\"]}}\n"
        ));
    }
    s.push_str(
        "services:\n  - {name: bench, enabled: true, state: running}\nfiles:\n  - path: /etc/systemd/system/bench.service\n    content: |\n      [Service]\n      ExecStart=/bin/sleep infinity\n      [Install]\n      WantedBy=multi-user.target\n",
    );
    for i in 0..FILES {
        let v = if i == 0 { version } else { "v1" };
        s.push_str(&format!(
            "  - {{path: /srv/bench/f{i:03}.conf, content: \"{v} setting {i} = {}\\n\"}}\n",
            i * 7
        ));
    }
    s
}

/// Peak resident set of any child waited for so far, in MiB.
fn children_peak_rss_mib() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn timed(repo: &FleetRepo, args: &[&str], want: i32) -> Duration {
    let t = Instant::now();
    let out = repo.tk(args);
    let d = t.elapsed();
    assert_eq!(out.status.code(), Some(want), "{}", text(&out));
    d
}

fn floor(bed: &Testbed, rt: &tokio::runtime::Runtime) -> Duration {
    support::on_every_host(
        bed,
        rt,
        HOSTS,
        "sha256sum /srv/bench/*.conf",
        Duration::from_secs(30),
        |out| {
            assert!(out.success());
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), FILES);
        },
    )
}

/// The cold floor: on fresh hosts, all in parallel over one connection
/// each, a plain script does what the cold apply does (the package, the two
/// users with their keys, the service, the 200 files) with ONE `sync` at
/// the end and no checks.
fn cold_floor(bed: &Testbed, rt: &tokio::runtime::Runtime) -> Duration {
    let key = bed.public_key.trim().to_string();
    let mut script = String::from(
        "set -e\nexport DEBIAN_FRONTEND=noninteractive\n\
         apt-get install -y -q --no-install-recommends jq >/dev/null\n",
    );
    for u in ["alice", "bob"] {
        script.push_str(&format!(
            "useradd -m -s /bin/bash {u}\nmkdir -p /home/{u}/.ssh\n\
             printf '%s\\n' '{key}' >/home/{u}/.ssh/authorized_keys\n\
             chown -R {u}: /home/{u}/.ssh\nchmod 700 /home/{u}/.ssh\n"
        ));
    }
    script.push_str(
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n[Install]\\nWantedBy=multi-user.target\\n' \
         >/etc/systemd/system/bench.service\nmkdir -p /srv/bench\n",
    );
    for i in 0..FILES {
        script.push_str(&format!(
            "printf 'v1 setting {i} = {}\\n' >/srv/bench/f{i:03}.conf\n",
            i * 7
        ));
    }
    script.push_str(
        "systemctl daemon-reload\nsystemctl enable --now bench.service 2>/dev/null\nsync\n",
    );
    support::on_every_host(bed, rt, HOSTS, &script, Duration::from_secs(300), |out| {
        assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr))
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );

    // The cold apply and its floor, each on 8 hosts of their own booted
    // just before it (so both find the machine alike), three times. One bed
    // at a time: 16 hosts booting together sometimes come up degraded.
    let mut colds = Vec::new();
    for _ in 0..COLD_RUNS {
        let f = cold_floor(&Testbed::start(HOSTS), &rt);
        let apply_bed = Testbed::start(HOSTS);
        let cold_repo = FleetRepo::minimal(&apply_bed, &[("bench", &role("v1", &apply_bed))]);
        let a = timed(&cold_repo, &["apply", "--yes"], 0);
        colds.push((f, a));
    }
    let bed = Testbed::start(HOSTS);
    let repo = FleetRepo::minimal(&bed, &[("bench", &role("v1", &bed))]);
    let cold = timed(&repo, &["apply", "--yes"], 0);
    let floors: Vec<Duration> = (0..RUNS).map(|_| floor(&bed, &rt)).collect();
    let noop: Vec<Duration> = (0..RUNS)
        .map(|_| timed(&repo, &["plan", "--detailed-exitcode"], 0))
        .collect();
    let mut one = Vec::new();
    for run in 0..RUNS {
        repo.write("roles/bench.yaml", &role(&format!("v{}", run + 2), &bed));
        repo.commit("change one file");
        one.push(timed(&repo, &["apply", "--yes"], 0));
    }
    let floor = median(floors.clone());
    let (noop, one) = (median(noop), median(one));
    println!(
        "fleet-200: {HOSTS} hosts × {FILES} files, 2 users, 1 service, 1 package; median of {RUNS}"
    );
    println!(
        "  floor (connect + sha256sum, all hosts in parallel): {} (runs: {:?})",
        ms(floor),
        floors.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    let ratios: Vec<f64> = colds
        .iter()
        .map(|(f, a)| a.as_secs_f64() / f.as_secs_f64())
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "  cold apply:            {} = {:.2}× its floor of {}, median of {COLD_RUNS} pairs (a plain script, one sync; target ≤ 1.3×); pairs (floor, apply, ratio): {:?}",
        ms(median(colds.iter().map(|c| c.1).collect())),
        sorted[sorted.len() / 2],
        ms(median(colds.iter().map(|c| c.0).collect())),
        colds
            .iter()
            .zip(&ratios)
            .map(|((f, a), r)| format!("{} {} {r:.2}×", ms(*f), ms(*a)))
            .collect::<Vec<_>>()
    );
    println!("  cold apply of the bed the runs below use: {}", ms(cold));
    println!(
        "  no-op plan:            {}  = {:.2}× floor (target ≤ 2×)",
        ms(noop),
        noop.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  one-changed-file apply {}  = {:.2}× floor (target ≤ 3×)",
        ms(one),
        one.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  controller peak RSS:   {:.1} MiB (target < 50 MB)",
        children_peak_rss_mib()
    );
}
