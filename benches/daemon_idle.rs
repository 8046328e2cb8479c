//! Benchmark: what the daemon costs while idle. Boots 4 test hosts, starts
//! `tidekeeper run` on a config repo for them, waits for the first apply, then
//! samples the process over a window with several polls (nothing new to do)
//! and no drift check: CPU time used (utime + stime from /proc), resident
//! memory now and at its peak. `cargo bench --bench daemon_idle` (as root).

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::fleet::FleetRepo;
use support::testbed::Testbed;

fn proc_stat(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu =
        (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

fn main() {
    let window: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let bed = Testbed::start(4);
    let mut role = String::from("files:\n");
    for i in 0..50 {
        role.push_str(&format!(
            "  - {{path: /srv/idle/f{i:02}, content: \"{i}\\n\"}}\n"
        ));
    }
    let repo = FleetRepo::minimal(&bed, &[("idle", &role)]);
    let d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "10s", "--drift", "3600s"],
    );
    let head = support::git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&head, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let pid = d.child.id();
    let (cpu0, rss0, _) = proc_stat(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(window));
    let (cpu1, rss1, hwm) = proc_stat(pid);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "daemon idle over {secs:.0} s (4 hosts × 50 files applied; poll every 10 s, {} polls):",
        window / 10
    );
    println!(
        "  CPU used:  {:.3} s = {:.3}% of one core ({:.1} ms per poll)",
        cpu1 - cpu0,
        (cpu1 - cpu0) / secs * 100.0,
        (cpu1 - cpu0) * 1000.0 / (window / 10) as f64
    );
    println!(
        "  RSS:       {:.1} MiB at start of window, {:.1} MiB at end, peak {:.1} MiB (target < 30 MB)",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
