//! Issue 34: planning a pull request is untrusted computation, done in a
//! worker process with limits. Whatever a PR makes it do — exhaust memory,
//! spin, stall, blow up `count:` or templates — the daemon stays up (these
//! tests run it in this very process), main is applied meanwhile, and the
//! PR's verdict names the limit it met.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::controller::{Running, Setup, commit, start_with, until};
use crate::support::{TempDir, git};

/// A fleet of one local host confined under `dir/a`, with small limits so
/// a runaway proposal is cut short quickly.
fn fleet(dir: &Path, limits: &str) -> PathBuf {
    let repo = dir.join("fleet");
    let a = dir.join("a");
    for d in [&repo, &a] {
        std::fs::create_dir_all(d).unwrap();
    }
    let w = |rel: &str, text: &str| {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "tidekeeper.yaml",
        &format!("fleet: sandbox\nproposals:\n{limits}"),
    );
    w(
        "hosts/a.yaml",
        &format!("provider: local\nroot: {}\nroles: [app]\n", a.display()),
    );
    w(
        "roles/app.yaml",
        "files:\n  - {path: /etc/app.conf, content: \"v1\\n\"}\n",
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    commit(&repo, "fleet");
    repo
}

const LIMITS: &str = "  cpu: 4s\n  deadline: 6s\n  workers: 2\n";

/// Open pull request `n` whose head adds `files`; its head commit.
fn open_pr(repo: &Path, n: u32, files: &[(&str, &str)]) -> String {
    git(repo, &["checkout", "-q", "-b", &format!("pr-{n}")]);
    for (rel, text) in files {
        let p = repo.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let head = commit(repo, &format!("pr {n}"));
    git(repo, &["update-ref", &format!("refs/pull/{n}/head"), &head]);
    git(repo, &["checkout", "-q", "main"]);
    head
}

fn note(repo: &Path, commit: &str) -> String {
    std::process::Command::new("git")
        .args(["notes", "--ref=tidekeeper", "show", commit])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

async fn daemon(repo: &Path, state: &Path) -> Running {
    let d = start_with(
        repo,
        state,
        Setup {
            real_time: true,
            proposals: &["refs/pull/*/head"],
            ..Default::default()
        },
    )
    .await;
    let head = git(repo, &["rev-parse", "HEAD"]);
    until("main applied", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(head.as_str())
    })
    .await;
    d
}

/// The peak resident size of this process (the daemon runs in it), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_that_exhausts_memory_or_stalls_is_its_own_verdict_while_main_is_applied() {
    let tmp = TempDir::new("sandbox-limits");
    let repo = fleet(tmp.path(), LIMITS);
    let d = daemon(&repo, &tmp.path().join("state")).await;
    let rss_before = peak_rss_mib();

    // Three ways to eat memory or time, from a policy and a template.
    let oom = open_pr(
        &repo,
        1,
        &[(
            "policies/eat.rego",
            "package eat\n\nimport rego.v1\n\nn := count(numbers.range(1, 100000000000))\n\ndeny contains \"x\" if n > 0\n",
        )],
    );
    let spin = open_pr(
        &repo,
        2,
        &[(
            "policies/spin.rego",
            "package spin\n\nimport rego.v1\n\nnever if {\n  some i in numbers.range(1, 1000000)\n  some j in numbers.range(1, 1000000)\n  i == j - 2000000\n}\n\ndeny contains \"x\" if never\n",
        )],
    );
    let big = open_pr(
        &repo,
        3,
        &[(
            "policies/big.rego",
            "package big\n\nimport rego.v1\n\ns := concat(\"\", [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" | some i in numbers.range(1, 40000000)])\n\ndeny contains \"x\" if count(s) > 0\n",
        )],
    );
    d.shared.poke();
    // While they are being planned, a commit to main is applied at once.
    // A head is recorded as planning in the state directory before its
    // worker starts, and until its verdict is in.
    let record = tmp.path().join("state/proposals.json");
    until(
        "a worker planning a proposal",
        Duration::from_secs(30),
        || {
            let Ok(text) = std::fs::read_to_string(&record) else {
                return false;
            };
            let seen: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            seen.as_object().is_some_and(|refs| {
                refs.values().any(|s| {
                    s["planning"] == true
                        && [&oom, &spin, &big]
                            .iter()
                            .any(|h| s["commit"] == h.as_str())
                })
            })
        },
    )
    .await;
    std::fs::write(
        repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"v2\\n\"}\n",
    )
    .unwrap();
    let main = commit(&repo, "v2 while proposals plan");
    let pushed = std::time::Instant::now();
    d.shared.poke();
    // Applied without waiting for the workers (a bound with room for a
    // busy machine: the loop never waits on a proposal).
    until(
        "main applied while proposals plan",
        Duration::from_secs(30),
        || d.applied().as_deref() == Some(main.as_str()),
    )
    .await;
    assert!(pushed.elapsed() < Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("a/etc/app.conf")).unwrap(),
        "v2\n"
    );

    for (head, what) in [(&oom, "oom"), (&spin, "spin"), (&big, "big")] {
        until(
            &format!("the {what} verdict"),
            Duration::from_secs(60),
            || {
                let n = note(&repo, head);
                n.contains("not planned") || n.contains("Plan digest")
            },
        )
        .await;
        let n = note(&repo, head);
        // A slow policy meets the worker's CPU or memory limit, or first
        // the policy engine's own time limit (on a busy machine): either way
        // a verdict, in seconds. The huge allocation always meets memory.
        assert!(
            n.contains("not planned: exceeded its")
                || (what != "oom" && n.contains("execution exceeded time limit")),
            "{what}: {n}"
        );
    }
    assert!(
        note(&repo, &oom).contains("not planned: exceeded its 1024 MiB memory limit"),
        "{}",
        note(&repo, &oom)
    );
    let spun = note(&repo, &spin);
    assert!(
        spun.contains("exceeded its 4 s CPU limit")
            || spun.contains("exceeded its 6 s deadline")
            || spun.contains("execution exceeded time limit"),
        "{spun}"
    );
    // The daemon is up and was never near the worker's memory.
    let health = reqwest::get(format!("http://{}/healthz", d.addr))
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(
        peak_rss_mib() < rss_before + 256,
        "the daemon's own memory grew: {} MiB -> {} MiB",
        rss_before,
        peak_rss_mib()
    );
    // Each verdict is recorded once: not planned again by itself.
    let record = std::fs::read_to_string(tmp.path().join("state/proposals.json")).unwrap();
    assert!(!record.contains("\"planning\""), "{record}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_whose_planning_took_the_daemon_down_is_never_planned_again_by_itself() {
    let tmp = TempDir::new("sandbox-crashed");
    let repo = fleet(tmp.path(), LIMITS);
    let head = open_pr(
        &repo,
        1,
        &[(
            "roles/app.yaml",
            "files:\n  - {path: /etc/app.conf, content: \"pr\\n\"}\n",
        )],
    );
    // The record says a worker was planning it when the daemon stopped.
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("proposals.json"),
        format!("{{\"refs/pull/1/head\": {{\"commit\": \"{head}\", \"planning\": true}}}}"),
    )
    .unwrap();
    let d = daemon(&repo, &state).await;
    until("the verdict", Duration::from_secs(30), || {
        note(&repo, &head).contains("not planned")
    })
    .await;
    let n = note(&repo, &head);
    assert!(n.contains("its planning did not finish"), "{n}");
    assert!(!n.contains("Plan digest"), "it was planned after all: {n}");
    // A new head is planned as usual.
    git(&repo, &["checkout", "-q", "pr-1"]);
    std::fs::write(
        repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"pr2\\n\"}\n",
    )
    .unwrap();
    let next = commit(&repo, "pr 1, again");
    git(&repo, &["update-ref", "refs/pull/1/head", &next]);
    git(&repo, &["checkout", "-q", "main"]);
    d.shared.poke();
    until("the new head planned", Duration::from_secs(30), || {
        note(&repo, &next).contains("Plan digest")
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_per_proposal_not_per_file() {
    let tmp = TempDir::new("sandbox-budgets");
    let repo = fleet(
        tmp.path(),
        &format!("{LIMITS}  max_rendered_mib: 16\n  max_hosts: 1500\n"),
    );
    let d = daemon(&repo, &tmp.path().join("state")).await;
    // Each render is small enough alone; 50 hosts × 20 files are not.
    let files: String = (0..20)
        .map(|i| format!("  - {{path: /etc/big-{i}, template: big.j2}}\n"))
        .collect();
    let rendered = open_pr(
        &repo,
        1,
        &[
            ("templates/big.j2", "{{ \"x\" * 100000 }}\n"),
            ("roles/big.yaml", &format!("files:\n{files}")),
            (
                "hosts/many.yaml",
                &format!(
                    "count: 50\nprovider: local\nroot: {}\nroles: [big]\n",
                    tmp.path().join("many").display()
                ),
            ),
        ],
    );
    // 1000 hosts in each of two files: more hosts than the budget.
    let group = |name: &str| {
        (
            format!("hosts/{name}.yaml"),
            format!(
                "count: 1000\nprovider: local\nroot: {}\nroles: [app]\n",
                tmp.path().join(name).display()
            ),
        )
    };
    let (g1, g2) = (group("g1"), group("g2"));
    let hosts = open_pr(&repo, 2, &[(&g1.0, &g1.1), (&g2.0, &g2.1)]);
    d.shared.poke();
    for (head, what, budget) in [
        (&rendered, "rendered", "proposals.max_rendered_mib"),
        (&hosts, "hosts", "proposals.max_hosts"),
    ] {
        until(
            &format!("the {what} verdict"),
            Duration::from_secs(60),
            || note(&repo, head).contains("invalid config"),
        )
        .await;
        let n = note(&repo, head);
        assert!(n.contains("proposal-budget") && n.contains(budget), "{n}");
    }
    d.stop().await;
}

const GUARD: &str = "package guard\n\nimport rego.v1\n\ndeny contains msg if {\n\tsome r in input.resources\n\tr.type == \"file\"\n\tstartswith(r.address, \"a file /etc/forbidden\")\n\tmsg := \"no forbidden files\"\n}\n\ndeny contains msg if {\n\tsome r in input.resources\n\tr.type == \"file\"\n\tcontains(r.address, \"forbidden\")\n\tmsg := sprintf(\"%s is forbidden\", [r.address])\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_cannot_switch_off_or_add_to_the_bases_policies() {
    let tmp = TempDir::new("sandbox-provenance");
    let repo = fleet(tmp.path(), LIMITS);
    std::fs::create_dir_all(repo.join("policies")).unwrap();
    std::fs::write(repo.join("policies/guard.rego"), GUARD).unwrap();
    commit(&repo, "a guard");
    let d = daemon(&repo, &tmp.path().join("state")).await;
    let forbidden = "files:\n  - {path: /etc/app.conf, content: \"v1\\n\"}\n  - {path: /etc/forbidden, content: \"x\\n\"}\n";
    // The same forbidden file, with files that try to switch the guard off:
    // rules in the base's own package, in a built-in package, and a changed
    // copy of the guard itself.
    let head = open_pr(
        &repo,
        1,
        &[
            ("roles/app.yaml", forbidden),
            (
                "policies/zz-override.rego",
                "package guard\n\nimport rego.v1\n\ndefault allow := true\n\ndeny := set()\n",
            ),
            (
                "policies/builtin.rego",
                "package tidekeeper.builtin.ssh\n\nimport rego.v1\n\ndeny := set()\n",
            ),
            ("policies/guard.rego", "package guard\n\nimport rego.v1\n"),
            (
                "policies/new.rego",
                "package proposed\n\nimport rego.v1\n\nwarn contains \"<!-- hidden --> ```\" if true\n",
            ),
        ],
    );
    d.shared.poke();
    until("the verdict", Duration::from_secs(60), || {
        note(&repo, &head).contains("Plan digest")
    })
    .await;
    let n = note(&repo, &head);
    assert!(
        n.contains("is forbidden (policy guard)"),
        "still judged by the base: {n}"
    );
    assert!(!n.contains("Policies: all passed"), "{n}");
    assert!(
        n.contains("policies/zz-override.rego: declares package guard, which the base's policies own; refused"),
        "{n}"
    );
    assert!(
        n.contains("policies/builtin.rego: declares package tidekeeper.builtin.ssh"),
        "{n}"
    );
    assert!(
        n.contains("policies/guard.rego: judged by the base branch's version until merge"),
        "{n}"
    );
    // A new policy of its own is judged apart, and its text is escaped.
    assert!(n.contains("**Proposed policies**"), "{n}");
    assert!(n.contains("&lt;!-- hidden --&gt; &#96;&#96;&#96;"), "{n}");
    let status = d.shared.board.lock().unwrap().history.proposals["refs/pull/1/head"].clone();
    assert_eq!(status.state, "failure", "{status:?}");
    assert!(status.description.contains("denied by guard"), "{status:?}");
    d.stop().await;
}

#[test]
fn a_policys_print_never_reaches_the_log_raw() {
    let tmp = TempDir::new("sandbox-print");
    let repo = fleet(tmp.path(), LIMITS);
    std::fs::create_dir_all(repo.join("policies")).unwrap();
    std::fs::write(
        repo.join("policies/chatty.rego"),
        "package chatty\n\nimport rego.v1\n\nwarn contains \"w\" if {\n\tprint(\"2026-12-06T00:00:00Z  INFO tidekeeper: applied, all good\")\n\ttrue\n}\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"v2\\n\"}\n",
    )
    .unwrap();
    commit(&repo, "chatty");
    let out = crate::support::tidekeeper()
        .args(["plan", "--json", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stderr.contains("applied, all good"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["policy"]["warn"][0], "w (policy chatty)", "{v}");
    assert!(
        v["policy"]["prints"][0]
            .as_str()
            .is_some_and(|p| p.contains("applied, all good")),
        "{v}"
    );
}

/// The plan digest a note records.
fn digest(note: &str) -> String {
    note.split("Plan digest: `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap_or_else(|| panic!("no digest in {note}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_learns_nothing_from_creates_paths_or_guessed_secret_content() {
    use crate::support::fleet::FleetRepo;
    use crate::support::testbed::Testbed;
    // A real host: local hosts are never contacted for a proposal at all.
    let bed = Testbed::start_light(1);
    let base = "files:\n  - {path: /etc/tk-app, content: \"v1\\n\"}\n  - {path: /etc/tk-token, content: \"real-token-4471\\n\", sensitive: true}\n";
    let repo = FleetRepo::minimal(&bed, &[("app", base)]);
    let tmp = TempDir::new("sandbox-oracles");
    let d = start_with(
        &repo.path,
        &tmp.path().join("state"),
        Setup {
            real_time: true,
            ssh_key: Some(&repo.key),
            proposals: &["refs/pull/*/head"],
            ..Default::default()
        },
    )
    .await;
    let head = git(&repo.path, &["rev-parse", "HEAD"]);
    until("main applied", Duration::from_secs(60), || {
        d.applied().as_deref() == Some(head.as_str())
    })
    .await;
    bed.ssh_ok(0, "touch /etc/tk-present");
    let role =
        |extra: &str| format!("files:\n  - {{path: /etc/tk-app, content: \"v1\\n\"}}\n{extra}");
    // Two guesses at the token, one right: the plans must not tell them apart.
    let right = open_pr(
        &repo.path,
        1,
        &[(
            "roles/app.yaml",
            &role("  - {path: /etc/tk-token, content: \"real-token-4471\\n\"}\n"),
        )],
    );
    let wrong = open_pr(
        &repo.path,
        2,
        &[(
            "roles/app.yaml",
            &role("  - {path: /etc/tk-token, content: \"guess-0000-0000\\n\"}\n"),
        )],
    );
    // Two `creates:` paths, one that exists: the same.
    let cmd = |path: &str| {
        role(&format!(
            "  - {{path: /etc/tk-token, content: \"real-token-4471\\n\", sensitive: true}}\ncommands:\n  - {{name: look, run: \"true\", creates: {path}}}\n"
        ))
    };
    let exists = open_pr(
        &repo.path,
        3,
        &[("roles/app.yaml", &cmd("/etc/tk-present"))],
    );
    let absent = open_pr(&repo.path, 4, &[("roles/app.yaml", &cmd("/etc/tk-absent"))]);
    d.shared.poke();
    for head in [&right, &wrong, &exists, &absent] {
        until("planned", Duration::from_secs(60), || {
            note(&repo.path, head).contains("Plan digest")
        })
        .await;
    }
    let (r, w) = (note(&repo.path, &right), note(&repo.path, &wrong));
    assert_eq!(
        digest(&r),
        digest(&w),
        "a guess was confirmed:\n{r}\n---\n{w}"
    );
    assert!(
        r.contains("not compared (secrets are never decrypted for proposals): /etc/tk-token"),
        "{r}"
    );
    let (e, a) = (note(&repo.path, &exists), note(&repo.path, &absent));
    assert_eq!(
        digest(&e),
        digest(&a),
        "a path's existence leaked:\n{e}\n---\n{a}"
    );
    assert!(e.contains("runs if its guard says so"), "{e}");
    d.stop().await;
}

/// A small deterministic generator (xorshift): the same trees every run,
/// a different corpus with `TIDEKEEPER_HOSTILE_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn upto(&mut self, n: u64) -> u64 {
        1 + self.next() % n
    }
}

/// One hostile file: something that is expensive, deep, huge or malformed.
fn hostile_file(rng: &mut Rng, i: usize) -> (String, String) {
    let n = rng.upto(1000);
    match rng.next() % 9 {
        0 => (
            format!("hosts/h{i}.yaml"),
            format!("count: {n}\nprovider: local\nroot: /nonexistent/tk-hostile-{}\nroles: [r{i}]\nvars:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n", 1 + i % 250),
        ),
        1 => (
            format!("templates/t{i}.j2"),
            format!("{{% for i in range({}) %}}{{{{ \"{}\" * {} }}}}{{% endfor %}}", rng.upto(1_000_000), rng.pick(&["x", "<!--", "```"]), rng.upto(100_000)),
        ),
        2 => (
            format!("roles/r{i}.yaml"),
            format!("files:\n{}", (0..rng.upto(50)).map(|k| format!("  - {{path: /etc/h{k}, template: t{}.j2}}\n", rng.upto(8))).collect::<String>()),
        ),
        3 => (
            format!("policies/p{i}.rego"),
            format!("package p{i}\n\nimport rego.v1\n\n{}\n", rng.pick(&[
                "x := count(numbers.range(1, 100000000000))",
                "x := concat(\"\", [\"yyyyyyyyyyyyyyyy\" | some i in numbers.range(1, 90000000)])",
                "deny contains m if { some i in numbers.range(1, 100000000); m := sprintf(\"%d\", [i]) }",
                "x if { some i in numbers.range(1, 2000000); some j in numbers.range(1, 2000000); i == -j }",
                "deny contains \"```\\n<!-- closes the fence -->\" if true",
                "r(n) := r(n + 1)\nx := r(0)",
                "this is not rego {{{",
            ])),
        ),
        4 => (
            format!("hosts/deep{i}.yaml"),
            format!("{}{}", "[".repeat(rng.upto(5000) as usize), "]".repeat(rng.upto(5000) as usize)),
        ),
        5 => (
            format!("roles/r{i}.yaml"),
            format!("files:\n  - {{path: \"/etc/{}\", content: \"{}\"}}\n", "a/".repeat(rng.upto(2000) as usize), "z".repeat(rng.upto(2_000_000) as usize)),
        ),
        6 => (
            format!("hosts/u{i}.yaml"),
            String::from_utf8_lossy(&[0xff, 0xfe, b'\n', 0, 1, 2]).to_string(),
        ),
        7 => ("tidekeeper.yaml".into(), format!("fleet: sandbox\nproposals:\n  memory_mib: {}\n  cpu: 1h\n  deadline: 1h\n  workers: 100\n", rng.upto(100_000))),
        _ => (
            format!("hosts/c{i}.yaml"),
            format!("count: {n}\nprovider: local\nroot: /nonexistent/tk-hostile\nroles: [r{}]\n", rng.upto(8)),
        ),
    }
}

#[test]
fn random_hostile_trees_end_as_verdicts_within_their_limits() {
    use tidekeeper::daemon::worker::{self, Job};
    let tmp = TempDir::new("sandbox-random");
    let repo = fleet(tmp.path(), "  cpu: 3s\n  deadline: 4s\n");
    let base = git(&repo, &["rev-parse", "HEAD"]);
    let seed: u64 = std::env::var("TIDEKEEPER_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_7d1e);
    let trees: usize = std::env::var("TIDEKEEPER_HOSTILE_TREES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = peak_rss_mib();
    let limits = tidekeeper::model::desired::ProposalLimits {
        cpu_secs: 3,
        deadline_secs: 4,
        ..Default::default()
    };
    for t in 0..trees {
        git(&repo, &["checkout", "-q", "-B", "hostile", &base]);
        let files: Vec<(String, String)> = (0..rng.upto(4) as usize)
            .map(|i| hostile_file(&mut rng, i))
            .collect();
        for (rel, text) in &files {
            let p = repo.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let head = commit(&repo, &format!("hostile tree {t}"));
        git(&repo, &["checkout", "-q", "main"]);
        let job = Job {
            mirror: repo.clone(),
            base_commit: base.clone(),
            name: format!("refs/pull/{t}/head"),
            head,
            hosts: None,
            ssh_key: None,
            cloud: None,
            cloud_error: None,
            limits: limits.clone(),
        };
        let started = std::time::Instant::now();
        let result = rt.block_on(worker::plan(
            Path::new(env!("CARGO_BIN_EXE_tidekeeper")),
            &job,
        ));
        let took = started.elapsed();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        // Whatever the tree, an answer within the deadline (and the grace
        // of reading a killed worker's pipes).
        assert!(
            took < Duration::from_secs(10),
            "tree {t} {names:?} took {took:?}"
        );
        match result {
            Ok(p) => {
                assert!(!p.note.is_empty(), "tree {t} {names:?}");
                assert!(
                    !p.verdict.1.chars().any(|c| c.is_control()),
                    "tree {t}: {:?}",
                    p.verdict
                );
            }
            Err(why) => {
                assert!(!why.chars().any(|c| c.is_control()), "tree {t}: {why:?}");
                assert!(why.len() < 400, "tree {t}: {why}");
            }
        }
    }
    // None of it landed in this process.
    assert!(
        peak_rss_mib() < before + 256,
        "{before} MiB -> {} MiB",
        peak_rss_mib()
    );
}
