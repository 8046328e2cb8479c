//! /metrics as Prometheus reads it, and the Grafana dashboard built on it.

use std::collections::{BTreeMap, BTreeSet};

use tidekeeper::daemon::status::{FleetStatus, HostState, HostStatus, Metrics, prometheus};

/// Everything the daemon can export, with every family filled.
fn exported() -> String {
    let mut st = FleetStatus::default();
    let mut h = HostStatus::new("web-1");
    h.state = HostState::Drifted;
    h.drift = vec!["~ file /etc/x".into()];
    st.hosts.insert("web-1".into(), h);
    st.monthly_cost.insert("EUR".into(), 12.5);
    st.stale = vec!["fetch failing".into()];
    let mut m = Metrics::default();
    m.reconciles.insert(("web-1".into(), "synced".into()), 3);
    m.host_errors.insert("unreachable", 1);
    m.requeues.insert("hosts", 2);
    m.maintenance_runs.insert(("backup".into(), "ok".into()), 1);
    m.badges_served.insert("fleet".into(), 4);
    for s in [0.05, 0.3, 0.3, 7.0, 1000.0] {
        m.durations.entry("web-1".into()).or_default().observe(s);
    }
    let mut text = prometheus(&st, &m);
    text.push_str(&tidekeeper::notify::deliver::Notifier::open(None).metrics());
    text
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
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|f| families.get(*f).is_some_and(|t| t.1 == "histogram"))
}

#[test]
fn every_series_has_help_and_type_and_the_duration_is_a_cumulative_histogram() {
    let text = exported();
    let (families, samples) = parse(&text);
    for (name, _, _) in &samples {
        let f = family_of(name, &families).unwrap_or_else(|| panic!("{name} has no TYPE:\n{text}"));
        assert!(families[f].0, "{f} has no HELP");
        assert!(
            ["counter", "gauge", "histogram"].contains(&families[f].1.as_str()),
            "{f}"
        );
    }
    assert_eq!(
        families["tidekeeper_reconcile_duration_seconds"].1,
        "histogram"
    );
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
    assert_eq!(at("10"), 4.0);
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
    assert_eq!(
        build.1,
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
    );
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
                && *f != "tidekeeper_badge_requests_total"
                && *f != "tidekeeper_notifications_dropped_total"
        })
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}
