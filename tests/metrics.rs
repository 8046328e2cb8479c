//! /metrics as Prometheus reads it (OpenMetrics), and the Grafana dashboard built on it.

use std::collections::{BTreeMap, BTreeSet};

use tidekeeper::daemon::metrics::{Process, Scrape, openmetrics};
use tidekeeper::daemon::status::{FleetStatus, HostState, HostStatus, Metrics};

/// Everything the daemon can export, with every family filled.
fn exported() -> String {
    exported_with_host("web-1")
}

fn exported_with_host(host: &str) -> String {
    let mut st = FleetStatus::default();
    let mut h = HostStatus::new(host);
    h.state = HostState::Drifted;
    h.drift = vec!["~ file /etc/x".into()];
    st.hosts.insert(host.into(), h);
    st.monthly_cost.insert("EUR".into(), 12.5);
    st.stale = vec!["fetch failing".into()];
    let mut m = Metrics::default();
    m.reconciles.insert((host.into(), "synced".into()), 3);
    m.host_errors.insert("unreachable", 1);
    m.requeues.insert("hosts", 2);
    m.maintenance_runs.insert(("backup".into(), "ok".into()), 1);
    m.job_last_success_unix
        .insert("backup".into(), 1_700_000_000);
    m.badges_served.insert("fleet".into(), 4);
    m.last_fetch_unix = Some(1_700_000_100);
    m.last_applied_unix = Some(1_700_000_000);
    for s in [0.05, 0.3, 0.3, 7.0, 1000.0] {
        m.durations.entry(host.into()).or_default().observe(s);
    }
    let notify = tidekeeper::notify::deliver::Notifier::open(None).status();
    openmetrics(Scrape {
        status: st,
        metrics: m,
        notify,
        process: Process::current(),
    })
}

/// family → (HELP seen, TYPE).
type Families = BTreeMap<String, (bool, String)>;
/// (name, labels, value).
type Sample = (String, String, f64);

/// The families and the samples of a /metrics text.
fn parse(text: &str) -> (Families, Vec<Sample>) {
    let mut families: Families = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap();
            families.entry(name.into()).or_default().0 = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let name = w.next().unwrap();
            families.entry(name.into()).or_default().1 = w.next().unwrap().into();
        } else if line.starts_with('#') {
            assert!(
                line == "# EOF" || line.starts_with("# UNIT "),
                "unknown comment: {line}"
            );
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            samples.push((name.to_string(), labels.to_string(), value.parse().unwrap()));
        }
    }
    (families, samples)
}

fn family_of<'a>(name: &'a str, families: &Families) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    let typed = |suffixes: &[&str], kind: &str| {
        suffixes
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| families.get(*f).is_some_and(|t| t.1 == kind))
    };
    typed(&["_bucket", "_sum", "_count"], "histogram")
        .or_else(|| typed(&["_total"], "counter"))
        .or_else(|| typed(&["_info"], "info"))
}

#[test]
fn every_series_has_help_and_type_and_the_duration_is_a_cumulative_histogram() {
    let text = exported();
    let (families, samples) = parse(&text);
    for (name, _, _) in &samples {
        let f = family_of(name, &families).unwrap_or_else(|| panic!("{name} has no TYPE:\n{text}"));
        assert!(families[f].0, "{f} has no HELP");
        assert!(
            ["counter", "gauge", "histogram", "info"].contains(&families[f].1.as_str()),
            "{f}"
        );
    }
    assert_eq!(
        families["tidekeeper_reconcile_duration_seconds"].1,
        "histogram"
    );
    assert_eq!(families["tidekeeper_reconciles"].1, "counter");
    let buckets: Vec<(String, f64)> = samples
        .iter()
        .filter(|s| s.0 == "tidekeeper_reconcile_duration_seconds_bucket")
        .map(|s| (s.1.clone(), s.2))
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    let at = |le: &str| {
        buckets
            .iter()
            .find(|b| b.0.contains(&format!("le=\"{le}\"")))
            .unwrap()
            .1
    };
    assert_eq!(at("0.1"), 1.0);
    assert_eq!(at("0.5"), 3.0);
    assert_eq!(at("10.0"), 4.0);
    assert_eq!(at("+Inf"), 5.0, "the 1000 s run is only in +Inf");
    let count = samples
        .iter()
        .find(|s| s.0 == "tidekeeper_reconcile_duration_seconds_count")
        .unwrap()
        .2;
    assert_eq!(count, 5.0);
    // One series per state; 1 for the host's own.
    let states: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "tidekeeper_host_state")
        .collect();
    assert_eq!(states.len(), HostState::ALL.len());
    assert_eq!(states.iter().map(|s| s.2).sum::<f64>(), 1.0);
    assert!(
        states
            .iter()
            .any(|s| s.1.contains("state=\"drifted\"") && s.2 == 1.0)
    );
    let build = samples
        .iter()
        .find(|s| s.0 == "tidekeeper_build_info")
        .unwrap();
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        build.1,
        format!(
            "version=\"{}\",revision=\"{revision}\"",
            env!("CARGO_PKG_VERSION")
        ),
        "the revision is the checkout's HEAD"
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends in # EOF");
    // This process's own figures, read from /proc.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = samples.iter().find(|s| s.0 == name);
        assert!(v.is_some(), "{name} missing:\n{text}");
    }
    let value = |name: &str| samples.iter().find(|s| s.0 == name).unwrap().2;
    assert!(
        value("process_resident_memory_bytes") > 1e6,
        "a live process"
    );
    assert!(value("process_open_fds") >= 3.0, "stdin, stdout, stderr");
    assert!(value("process_start_time_seconds") > 1.5e9);
}

#[test]
fn a_newline_or_a_quote_in_a_host_name_is_escaped_and_cannot_forge_a_series() {
    let host = "evil\"} 1\ntidekeeper_stale{x=\"y\\";
    let text = exported_with_host(host);
    let (_, samples) = parse(&text);
    let escaped = r#"host="evil\"} 1\ntidekeeper_stale{x=\"y\\""#;
    let reconciles: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "tidekeeper_reconciles_total")
        .collect();
    assert_eq!(reconciles.len(), 1, "{text}");
    assert_eq!(
        reconciles[0].1,
        format!("{escaped},result=\"synced\""),
        "escaped as the text format wants"
    );
    assert_eq!(reconciles[0].2, 3.0);
    // The name did not start a line of its own: tidekeeper_stale is the real one only.
    let stale: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 == "tidekeeper_stale")
        .collect();
    assert_eq!(stale.len(), 1, "{text}");
    assert_eq!(stale[0].1, "");
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_daemon_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana/tidekeeper.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (families, _) = parse(&exported());
    let mut queried = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("tidekeeper_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                assert!(
                    family_of(&name, &families).is_some(),
                    "{name} in {expr:?} is not exported"
                );
                queried.insert(family_of(&name, &families).unwrap().to_string());
            }
        }
    }
    // Every family the daemon exports is on the dashboard.
    let missing: Vec<&String> = families
        .keys()
        .filter(|f| {
            !queried.contains(*f)
                && *f != "tidekeeper_badge_requests"
                && *f != "tidekeeper_notifications_dropped"
                && f.starts_with("tidekeeper_")
        })
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

/// promtool, or None where it is missing and the suite may skip it
/// (scripts/setup installs it; with TIDEKEEPER_REQUIRE_TOOLS the test fails).
fn promtool() -> Option<std::process::Command> {
    match std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => Some(std::process::Command::new("promtool")),
        _ => {
            let required = std::env::var_os("CI").is_some()
                || std::env::var_os("TIDEKEEPER_REQUIRE_TOOLS").is_some();
            assert!(
                !required,
                "promtool is not installed; scripts/setup installs it (Debian's prometheus package)"
            );
            eprintln!("skipping: promtool not installed; run scripts/setup to install it");
            None
        }
    }
}

fn run(mut cmd: std::process::Command, stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_accepts_the_exposition_with_no_lint_findings() {
    let Some(mut cmd) = promtool() else { return };
    cmd.args(["check", "metrics"]);
    // A host name that would break a hand-written exposition.
    let text = tidekeeper::daemon::metrics::classic_text(&exported_with_host("web\"1\n"));
    let (ok, out) = run(cmd, Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n{text}"
    );
    // The classic text has the same samples as the OpenMetrics one.
    let om = exported_with_host("web\"1\n");
    let samples = |t: &str| -> Vec<String> {
        // The process's own figures move between the two scrapes.
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
            .map(String::from)
            .collect()
    };
    assert_eq!(samples(&text), samples(&om));
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus");
    let Some(mut cmd) = promtool() else { return };
    cmd.args(["check", "rules", "tidekeeper-rules.yml"])
        .current_dir(dir);
    let (ok, out) = run(cmd, None);
    assert!(ok, "promtool check rules:\n{out}");
    let mut cmd = promtool().unwrap();
    cmd.args(["test", "rules", "tidekeeper-rules.test.yml"])
        .current_dir(dir);
    let (ok, out) = run(cmd, None);
    assert!(ok, "promtool test rules:\n{out}");
    // Every metric an alert reads is one the daemon exports.
    let (families, _) = parse(&exported());
    let rules = std::fs::read_to_string(format!("{dir}/tidekeeper-rules.yml")).unwrap();
    let mut alerts = 0;
    for line in rules.lines() {
        let Some(expr) = line.trim().strip_prefix("expr: ") else {
            continue;
        };
        alerts += 1;
        let mut rest = expr;
        while let Some(i) = rest.find("tidekeeper_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            assert!(
                family_of(&name, &families).is_some(),
                "{name} in {expr:?} is not exported"
            );
        }
    }
    assert!(
        alerts >= 8,
        "daemon down, fetch, hosts, quarantine, drift, jobs, backups, staleness"
    );
}
