//! Benchmark: validate + resolve a generated fleet of 500 hosts × 20 roles.
//!
//! Run with `cargo bench --bench validate`. Prints the time to read the tree
//! from git (the floor: every byte has to be read anyway), to validate and
//! resolve it, and the process's peak RSS. Results go in docs/benchmarks.md.

use std::time::{Duration, Instant};

use tidekeeper::source::{ConfigTree, init_repo};

const HOSTS: usize = 500;
const ROLES: usize = 20;

fn generate() -> ConfigTree {
    let mut t = ConfigTree::new();
    t.insert_file(
        "tidekeeper.yaml",
        "fleet: bench\ndefaults:\n  vars: {admin: ops@example.com}\n",
    );
    for r in 0..ROLES {
        let role = format!(
            "description: generated role {r}\nvars:\n  port_{r}: \"{port}\"\nfiles:\n  - path: /etc/bench/{r}/static.conf\n    content: |\n      setting = {r}\n    mode: \"0644\"\n  - path: /etc/bench/{r}/rendered.conf\n    template: role{r}.conf.j2\n    notify: [restart-{r}]\ndirectories:\n  - path: /srv/bench/{r}\npackages:\n  present: [pkg{r}]\nservices:\n  - name: svc{r}\n    enabled: true\n    state: running\nusers:\n  - name: user{r}\n    groups: [ops]\nfirewall:\n  rules:\n    - port: \"{port}\"\n      from: 10.0.0.0/8\nhandlers:\n  - name: restart-{r}\n    restart: svc{r}\n",
            port = 10000 + r
        );
        t.insert_file(format!("roles/role{r}.yaml"), role);
        t.insert_file(
            format!("templates/role{r}.conf.j2"),
            format!("# {{{{ host.name }}}} in {{{{ fleet.name }}}}\nadmin = {{{{ admin }}}}\nport = {{{{ port_{r} }}}}\n{{% for k, v in host.labels | items %}}{{{{ k }}}} = {{{{ v }}}}\n{{% endfor %}}"),
        );
    }
    let roles: Vec<String> = (0..ROLES).map(|r| format!("role{r}")).collect();
    for h in 0..HOSTS {
        t.insert_file(
            format!("hosts/host{h:03}.yaml"),
            format!(
                "provider: existing\naddress: 10.{}.{}.{}\nroles: [{}]\nlabels:\n  rack: r{}\n  env: prod\nvars:\n  index: {h}\n",
                h / 65536,
                (h / 256) % 256,
                h % 256,
                roles.join(", "),
                h % 10
            ),
        );
    }
    t
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tidekeeper-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    init_repo(&dir, &generate(), "bench fleet").expect("write bench repo");

    let runs = 7;
    let (mut read, mut model, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut resources = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let tree = ConfigTree::from_git(&dir, "HEAD").expect("read tree");
        let t1 = Instant::now();
        let fleet =
            tidekeeper::model::load(&tree).unwrap_or_else(|d| panic!("bench repo invalid:\n{d}"));
        let t2 = Instant::now();
        assert_eq!(fleet.hosts.len(), HOSTS);
        resources = fleet.hosts.iter().map(|h| h.resources.len()).sum::<usize>();
        read.push(t1 - t0);
        model.push(t2 - t1);
        total.push(t2 - t0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "validate+resolve: {HOSTS} hosts x {ROLES} roles = {resources} resources, median of {runs} runs"
    );
    println!(
        "  read tree from git (floor): {:>8.1} ms",
        median(read).as_secs_f64() * 1e3
    );
    println!(
        "  parse + check + resolve:    {:>8.1} ms",
        median(model).as_secs_f64() * 1e3
    );
    println!(
        "  total:                      {:>8.1} ms   (target < 1000 ms)",
        median(total).as_secs_f64() * 1e3
    );
    println!(
        "  peak RSS:                   {:>8.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
}
