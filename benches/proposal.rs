//! Benchmark: what planning a proposal in a worker process costs over
//! planning it in-process (issue 34: under 50 ms more).
//!
//! Run with `cargo bench --bench proposal`. An ordinary pull request (one
//! role changed) on a fleet of 40 hosts × 10 roles with templates and the
//! built-in policies; hosts are `provider: local`, never contacted for a
//! proposal, so both sides do the same work: read both commits from git,
//! resolve, render, judge, write the report. Prints min / median / max of
//! each over the same runs, interleaved. Results go in docs/benchmarks.md.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tidekeeper::daemon::worker::{self, Job};

const HOSTS: usize = 40;
const ROLES: usize = 10;
const RUNS: usize = 15;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.org",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn role(r: usize, version: &str) -> String {
    format!(
        "files:\n  - {{path: /etc/bench/{r}.conf, template: t{r}.j2}}\n  - {{path: /etc/bench/{r}.static, content: \"{version}\\n\"}}\npackages:\n  present: [pkg{r}]\nservices:\n  - {{name: svc{r}, enabled: true, state: running}}\n"
    )
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tk-bench-proposal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "tidekeeper.yaml", "fleet: bench\n");
    for r in 0..ROLES {
        write(&dir, &format!("roles/r{r}.yaml"), &role(r, "v1"));
        write(
            &dir,
            &format!("templates/t{r}.j2"),
            "# {{ host.name }}\n{% for k, v in host.labels | items %}{{ k }} = {{ v }}\n{% endfor %}",
        );
    }
    let roles: Vec<String> = (0..ROLES).map(|r| format!("r{r}")).collect();
    for h in 0..HOSTS {
        write(
            &dir,
            &format!("hosts/h{h:02}.yaml"),
            &format!(
                "provider: local\nroot: /tmp/tk-bench-never/{h}\nroles: [{}]\nlabels: {{rack: r{}}}\n",
                roles.join(", "),
                h % 4
            ),
        );
    }
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "base"]);
    let base = git(&dir, &["rev-parse", "HEAD"]);
    write(&dir, "roles/r3.yaml", &role(3, "v2"));
    git(&dir, &["commit", "-q", "-am", "pr"]);
    let head = git(&dir, &["rev-parse", "HEAD"]);
    let job = Job {
        mirror: dir.clone(),
        base_commit: base,
        name: "refs/pull/1/head".into(),
        head,
        hosts: None,
        ssh_key: None,
        cloud: None,
        cloud_error: None,
        limits: Default::default(),
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_tidekeeper"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One of each first: warm caches and check both agree.
    let a = rt
        .block_on(worker::plan_in_process(&job))
        .expect("in-process plan");
    let b = rt.block_on(worker::plan(exe, &job)).expect("worker plan");
    assert_eq!(a, b, "the worker plans what the daemon would");
    let (mut inproc, mut boundary) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        rt.block_on(worker::plan_in_process(&job)).unwrap();
        inproc.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(worker::plan(exe, &job)).unwrap();
        boundary.push(t.elapsed());
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (i, w) = (stats(&mut inproc), stats(&mut boundary));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("proposal plan, {HOSTS} hosts x {ROLES} roles, {RUNS} runs each, interleaved");
    println!(
        "in-process       min {:7.1} ms  median {:7.1} ms  max {:7.1} ms",
        ms(i.0),
        ms(i.1),
        ms(i.2)
    );
    println!(
        "worker process   min {:7.1} ms  median {:7.1} ms  max {:7.1} ms",
        ms(w.0),
        ms(w.1),
        ms(w.2)
    );
    println!("the worker's cost: median {:+.1} ms", ms(w.1) - ms(i.1));
    let _ = std::fs::remove_dir_all(&dir);
}
