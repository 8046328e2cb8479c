//! Benchmark "fleet-scale": hundreds of lightweight test hosts (sshd alone
//! in a network namespace of its own), each with a role of 50 files, 1 user
//! and 1 directory. For each fleet size (`BENCH_SCALE_HOSTS`, default
//! `200,500`) it measures, with the default parallelism (10):
//!
//! - the daemon (`tidekeeper run`): its first apply of the fleet and the two
//!   drift checks after it (a full one, then one between full checks), as
//!   its own log records them, and its peak RSS;
//! - `tidekeeper plan` with nothing to do, and `tidekeeper apply` of one
//!   changed file on every host: wall time, CPU seconds and peak RSS of the
//!   process (from `wait4`);
//! - SSH logins each one made, counted in the hosts' sshd logs;
//! - the floor, in the same run: an in-process client opening one connection
//!   per host with the same concurrency and running one `sha256sum` over the
//!   host's 50 files.
//!
//! Then the drift check of one host with `BENCH_DRIFT_FILES` (default
//! 10,000) managed files, hashing every file and only the changed ones
//! (`tidekeeper plan`, and the daemon's drift checks: its first, a full
//! check, then the ones between full checks), next to `sha256sum` and
//! `stat` over all of them on that host.
//!
//! `cargo bench --bench scale` (as root); results go in docs/benchmarks.md.

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::fleet::{FleetRepo, text};
use support::testbed::Testbed;
use tidekeeper::transport::Ssh;

const FILES: usize = 50;
const PARALLEL: usize = 10;
const RUNS: usize = 3;

fn role(version: &str) -> String {
    let mut s = String::from(
        "users:\n  - {name: app, shell: /bin/bash}\ndirectories:\n  - {path: /srv/scale, mode: \"0755\"}\nfiles:\n",
    );
    for i in 0..FILES {
        let v = if i == 0 { version } else { "v1" };
        s.push_str(&format!(
            "  - {{path: /srv/scale/f{i:02}.conf, content: \"{v} setting {i} = {}\\n\"}}\n",
            i * 7
        ));
    }
    s
}

struct Measured {
    wall: Duration,
    cpu: f64,
    rss_mib: f64,
    logins: usize,
}

/// SSH logins the hosts' sshd have accepted so far.
fn logins(bed: &Testbed) -> usize {
    bed.hosts
        .iter()
        .map(|h| h.log().matches("Accepted publickey").count())
        .sum()
}

/// Run `tidekeeper ARGS` to its end: wall time and the process's own
/// CPU time and peak RSS.
// `wait4` reaps it; clippy cannot see that.
#[allow(clippy::zombie_processes)]
fn measure(repo: &FleetRepo, bed: &Testbed, args: &[&str], want: i32) -> Measured {
    let before = logins(bed);
    let t = Instant::now();
    let child = repo
        .command(args, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // The child's own rusage: its CPU and its peak RSS, not the bench's.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = t.elapsed();
    assert_eq!(r, pid);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if code != Some(want) {
        let out = repo.command(args, &[]).output().unwrap();
        panic!("{args:?} exited {code:?}; again: {}", text(&out));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        wall,
        cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
        rss_mib: ru.ru_maxrss as f64 / 1024.0,
        logins: logins(bed) - before,
    }
}

fn floor(bed: &Testbed, rt: &tokio::runtime::Runtime) -> (Duration, usize) {
    let before = logins(bed);
    let t = support::on_every_host(
        bed,
        rt,
        PARALLEL,
        "sha256sum /srv/scale/*.conf",
        Duration::from_secs(60),
        |out| {
            assert!(out.success());
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), FILES);
        },
    );
    (t, logins(bed) - before)
}

/// `Threads`, `RssAnon`, `RssFile` and `VmHWM` of a live process, as /proc shows them.
fn proc_memory(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            ["Threads:", "RssAnon:", "RssFile:", "VmHWM:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The wall times of the daemon's reconciles, in order, from its log.
fn reconcile_seconds(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("reconcile done"))
        .filter_map(|l| {
            let at = l.find("\"elapsed_ms\":")? + "\"elapsed_ms\":".len();
            let digits: String = l[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<f64>().ok().map(|ms| ms / 1000.0)
        })
        .collect()
}

/// (utime + stime in seconds, VmHWM in MiB) of a live process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (rest[11].parse::<f64>().unwrap() + rest[12].parse::<f64>().unwrap()) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

struct DaemonRun {
    first_apply: f64,
    drift: f64,
    /// The second drift check: between full checks.
    quick_drift: f64,
    cpu: f64,
    rss_mib: f64,
    apply_logins: usize,
    drift_logins: usize,
}

/// The daemon's first apply of the fleet, then its first drift check (a
/// full one) and its second (between full checks); as its log records them.
fn daemon(repo: &FleetRepo, bed: &Testbed, n: usize) -> DaemonRun {
    let before = logins(bed);
    let mut d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "1h", "--drift", "5s", "--log-format", "json"],
    );
    let history = d.state.path().join("state").join("history.json");
    let runs = |apply: bool| -> Vec<f64> {
        let text = std::fs::read_to_string(&history).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["apply"].as_bool() == Some(apply) && r["hosts"].as_u64() == Some(n as u64)
            })
            .filter_map(|r| r["seconds"].as_f64())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    while runs(true).is_empty() {
        assert!(Instant::now() < deadline, "no first apply:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let apply_logins = logins(bed) - before;
    let after_apply = proc_memory(d.child.id());
    while runs(false).is_empty() {
        assert!(Instant::now() < deadline, "no drift check:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let drift_logins = logins(bed) - before - apply_logins;
    while runs(false).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second drift check:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (cpu, rss_mib) = proc_usage(d.child.id());
    println!(
        "  daemon memory after its first apply: {after_apply}; after the drift check: {}",
        proc_memory(d.child.id())
    );
    let walls = reconcile_seconds(&d.log());
    let _ = d.terminate();
    assert!(
        walls.len() >= 3,
        "the daemon logs each reconcile:\n{}",
        d.log()
    );
    DaemonRun {
        first_apply: walls[0],
        drift: walls[1],
        quick_drift: walls[2],
        cpu,
        rss_mib,
        apply_logins,
        drift_logins,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median_of(v: &[Measured]) -> &Measured {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by_key(|i| v[*i].wall);
    &v[idx[v.len() / 2]]
}

/// A role of `n` files (under `/srv/many`), `version` in the first.
fn many_files(n: usize, version: &str) -> String {
    let mut s = String::from("files:\n");
    for i in 0..n {
        let v = if i == 0 { version } else { "v1" };
        s.push_str(&format!(
            "  - {{path: /srv/many/d{:02}/f{i:05}.conf, content: \"{v} setting {i}\\n\"}}\n",
            i % 100
        ));
    }
    s
}

/// The drift check of one host with `files` managed files: a full plan
/// (every file hashed), a plan of changed files only (stat compared with the
/// host's stat cache), and their floors on the same host: one `sha256sum`
/// and one `stat` over every file.
fn drift_check(files: usize, rt: &tokio::runtime::Runtime) {
    let bed = Testbed::start_light(1);
    let repo = FleetRepo::minimal(&bed, &[("many", &many_files(files, "v1"))]);
    let t = Instant::now();
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cold = t.elapsed();
    let target = support::ssh_target(&bed.hosts[0], &bed.key);
    let floor = |cmd: &'static str| -> Duration {
        let target = target.clone();
        let t = Instant::now();
        rt.block_on(async move {
            let ssh = Ssh::connect(target).await.expect("connect");
            let out = ssh
                .run_script(cmd, Duration::from_secs(600))
                .await
                .expect("floor");
            assert!(out.success());
            ssh.close().await;
        });
        t.elapsed()
    };
    let hash_floor = median(
        (0..RUNS)
            .map(|_| floor("find /srv/many -type f -print0 | xargs -0 sha256sum >/dev/null"))
            .collect(),
    );
    let stat_floor = median(
        (0..RUNS)
            .map(|_| floor("find /srv/many -type f -print0 | xargs -0 stat -c '%s %i %.9Y %.9Z' >/dev/null"))
            .collect(),
    );
    let full: Vec<Measured> = (0..RUNS)
        .map(|_| measure(&repo, &bed, &["plan", "--detailed-exitcode"], 0))
        .collect();
    // The first quick plan finds no record of settled files: it probes in
    // full and vouches for the stat cache. The ones measured use it.
    measure(
        &repo,
        &bed,
        &["plan", "--detailed-exitcode", "--changed-files-only"],
        0,
    );
    let quick: Vec<Measured> = (0..RUNS)
        .map(|_| {
            measure(
                &repo,
                &bed,
                &["plan", "--detailed-exitcode", "--changed-files-only"],
                0,
            )
        })
        .collect();
    let (full, quick) = (median_of(&full), median_of(&quick));
    println!(
        "drift check, 1 light host with {files} managed files (cold apply {:.1} s)",
        cold.as_secs_f64()
    );
    println!(
        "  floors: sha256sum of every file {}; stat of every file {}",
        ms(hash_floor),
        ms(stat_floor)
    );
    for (what, m) in [
        ("full (every file hashed)", full),
        ("changed files only", quick),
    ] {
        println!(
            "  plan, {what:<26} {}; CPU {:.2} s; peak RSS {:.1} MiB",
            ms(m.wall),
            m.cpu,
            m.rss_mib
        );
    }
    // The daemon holds the config: its first drift check is a full one
    // (every file hashed; the stat cache vouched for), the ones after it
    // run between full checks.
    let mut d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "1h", "--drift", "2s", "--log-format", "json"],
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while reconcile_seconds(&d.log()).len() < 2 + RUNS {
        assert!(Instant::now() < deadline, "no drift checks:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let walls = reconcile_seconds(&d.log());
    let (cpu, rss_mib) = proc_usage(d.child.id());
    let _ = d.terminate();
    let between = median(
        walls[2..2 + RUNS]
            .iter()
            .map(|s| Duration::from_secs_f64(*s))
            .collect(),
    );
    println!(
        "  daemon drift check, full: {}; between full checks: {} (median of {RUNS}); daemon CPU {cpu:.1} s in all, peak RSS {rss_mib:.1} MiB",
        ms(Duration::from_secs_f64(walls[1])),
        ms(between)
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SCALE_HOSTS")
        .unwrap_or_else(|_| "200,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for n in sizes {
        let t = Instant::now();
        let bed = Testbed::start_light(n);
        let boot = t.elapsed();
        let repo = FleetRepo::minimal(&bed, &[("scale", &role("v1"))]);
        // The default parallelism.
        repo.write("tidekeeper.yaml", "fleet: test\n");
        repo.commit("default parallelism");

        let dm = daemon(&repo, &bed, n);
        let floors: Vec<(Duration, usize)> = (0..RUNS).map(|_| floor(&bed, &rt)).collect();
        let noop: Vec<Measured> = (0..RUNS)
            .map(|_| measure(&repo, &bed, &["plan", "--detailed-exitcode"], 0))
            .collect();
        let mut one = Vec::new();
        for run in 0..RUNS {
            repo.write("roles/scale.yaml", &role(&format!("v{}", run + 2)));
            repo.commit("change one file");
            one.push(measure(&repo, &bed, &["apply", "--yes"], 0));
        }
        let floor = median(floors.iter().map(|f| f.0).collect());
        let (noop, one) = (median_of(&noop), median_of(&one));
        let x = |d: Duration| d.as_secs_f64() / floor.as_secs_f64();
        println!(
            "fleet-scale {n}: {n} light hosts × ({FILES} files, 1 user, 1 directory); parallelism {PARALLEL}; {n} hosts up in {:.1} s",
            boot.as_secs_f64()
        );
        println!(
            "  floor (connect + sha256sum, {PARALLEL} at a time): {} (runs: {:?}), {} logins",
            ms(floor),
            floors.iter().map(|d| ms(d.0)).collect::<Vec<_>>(),
            floors[0].1
        );
        println!(
            "  daemon first apply:  {:.2} s ({} logins); drift check {:.2} s = {:.2}× floor ({} logins), the next (between full checks) {:.2} s = {:.2}×; daemon CPU {:.1} s, peak RSS {:.1} MiB (target < 100 MB)",
            dm.first_apply,
            dm.apply_logins,
            dm.drift,
            dm.drift / floor.as_secs_f64(),
            dm.drift_logins,
            dm.quick_drift,
            dm.quick_drift / floor.as_secs_f64(),
            dm.cpu,
            dm.rss_mib
        );
        for (what, m) in [("no-op plan", noop), ("one-file apply", one)] {
            println!(
                "  {what:<15} {} = {:.2}× floor; CPU {:.2} s; peak RSS {:.1} MiB; {} logins",
                ms(m.wall),
                x(m.wall),
                m.cpu,
                m.rss_mib,
                m.logins
            );
        }
    }
    let files: usize = std::env::var("BENCH_DRIFT_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if files > 0 {
        drift_check(files, &rt);
    }
}
