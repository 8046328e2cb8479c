//! Benchmark "cloud-50": the cloud stage alone. 50 Hetzner servers this
//! fleet's tidekeeper made earlier, all powered off (so no SSH happens), on
//! the local Hetzner emulator with a fixed latency per request standing in
//! for the network. Times `tidekeeper plan` end to end (process start, git,
//! model, listing servers, firewalls and prices with the real `hcloud`
//! client, planning with costs) next to the floor measured in the same run:
//! process start (`tidekeeper --version`) plus the same three listings made
//! one after the other with a plain HTTP client. Also the controller's peak
//! RSS. `cargo bench --bench cloud`; results go in docs/benchmarks.md.

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::cloud::{CREDENTIALS, Cloud, hetzner};
use support::fleet::{FleetRepo, text};

const SERVERS: usize = 50;
const RUNS: usize = 7;
const LATENCY: Duration = Duration::from_millis(20);

fn children_peak_rss_mib() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn floor(url: &str) -> Duration {
    let t = Instant::now();
    let out = support::tidekeeper().arg("--version").output().unwrap();
    assert!(out.status.success());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    rt.block_on(async {
        for path in [
            "/servers?page=1&per_page=50",
            "/firewalls?label_selector=managed-by%3Dtidekeeper&page=1&per_page=50",
            "/pricing",
        ] {
            let r = http
                .get(format!("{url}{path}"))
                .header("Authorization", format!("Bearer {}", hetzner::TOKEN))
                .send()
                .await
                .unwrap();
            let _ = r.text().await.unwrap();
        }
    });
    t.elapsed()
}

fn main() {
    let cloud = Cloud::new(0);
    let hz = hetzner::Hetzner::start(cloud.clone());
    *hz.faults.latency.lock().unwrap() = LATENCY;
    let mut files = vec![(
        "tidekeeper.yaml".to_string(),
        format!(
            "fleet: bench\nproviders:\n  hetzner:\n    endpoint: {}\n    timeout: 10s\n",
            hz.url
        ),
    )];
    for i in 1..=SERVERS {
        hz.add_owned_off("bench", &format!("web-{i}"), "cpx21");
    }
    files.push((
        "hosts/web.yaml".into(),
        format!(
            "name: web\ncount: {SERVERS}\nprovider: hetzner\nserver: {{type: cpx21, image: debian-12, location: fsn1}}\n"
        ),
    ));
    let key = cloud.bed.lock().unwrap().key.clone();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let repo = FleetRepo::with_files(key, &refs);
    let plan = |_: usize| {
        let t = Instant::now();
        let out = repo.tk_env(&["plan"], &CREDENTIALS);
        let d = t.elapsed();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("Monthly cost: {:.2}", 7.55 * SERVERS as f64)),
            "{}",
            text(&out)
        );
        d
    };
    let floors: Vec<Duration> = (0..RUNS).map(|_| floor(&hz.url)).collect();
    let plans: Vec<Duration> = (0..RUNS).map(plan).collect();
    let requests = hz.faults.log.lock().unwrap().len();
    let (floor, plan) = (median(floors.clone()), median(plans.clone()));
    println!(
        "cloud-50: {SERVERS} Hetzner servers (off), {} ms latency per request; median of {RUNS}",
        LATENCY.as_millis()
    );
    println!(
        "  floor (process start + 3 listings in a row): {} (runs: {:?})",
        ms(floor),
        floors.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!(
        "  plan:                                       {}  = {:.2}× floor (runs: {:?})",
        ms(plan),
        plan.as_secs_f64() / floor.as_secs_f64(),
        plans.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!(
        "  API requests:                               {} in {} runs ({} per plan)",
        requests,
        RUNS * 2,
        (requests - 3 * RUNS) / RUNS
    );
    println!(
        "  controller peak RSS:                        {:.1} MiB",
        children_peak_rss_mib()
    );
}
