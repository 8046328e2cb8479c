//! What in the daemon's status is a problem for a human: observations for
//! [`crate::notify::Alerts`], read off the status after every step (level-
//! triggered, like the reconcile: a missed step is seen on the next one).

use crate::engine::HostError;
use crate::maintenance::run::HostRunResult;
use crate::model::Fleet;
use crate::notify::{EventKind, Notify, Observation, Seen};

use super::status::{FleetStatus, HostState};

fn obs(
    key: String,
    kind: EventKind,
    host: Option<&str>,
    subject: String,
    summary: String,
    seen: Seen,
) -> Observation {
    Observation {
        key,
        kind,
        host: host.map(String::from),
        subject,
        summary,
        details: vec![],
        seen,
    }
}

const NOW: Seen = Seen::Problem { after_secs: 0 };

/// The `status` scope's observations. Pure.
pub(super) fn observations(
    st: &FleetStatus,
    fleet: &Fleet,
    n: &Notify,
    fetch_failing: bool,
) -> Vec<Observation> {
    let mut out = Vec::new();
    for h in &fleet.hosts {
        if let Some(hs) = st.hosts.get(&h.name) {
            out.extend(host_observations(&h.name, hs, n));
        }
    }
    out.extend(commit_observations(st));
    out.push(fetch_observation(st, n, fetch_failing));
    out.extend(job_observations(st, fleet));
    out
}

/// A host's: its apply failed, it rolled a change back, it is unreachable, it drifted.
fn host_observations(name: &str, hs: &super::status::HostStatus, n: &Notify) -> Vec<Observation> {
    let mut out = Vec::new();
    let subject = format!("host {name}");
    let mut error = hs.last_error.clone().unwrap_or_default();
    // An apply that failed stays a problem until an apply succeeds on
    // the host, whatever drift checks of the same commit say since.
    let (failed, rolled_back) = match (&hs.failed_apply, hs.state, hs.error_kind) {
        (Some(f), _, _) => {
            error = f.error.clone();
            if f.kind == HostError::RolledBack {
                (Seen::Unknown, NOW)
            } else {
                (NOW, Seen::Unknown)
            }
        }
        (None, HostState::Failed, Some(HostError::RolledBack)) => (Seen::Unknown, NOW),
        (None, HostState::Failed, _) => (NOW, Seen::Unknown),
        (None, HostState::Synced | HostState::Drifted, _) => (Seen::Fine, Seen::Fine),
        (None, HostState::Pending | HostState::Unreachable, _) => (Seen::Unknown, Seen::Unknown),
    };
    let result = match &hs.failed_apply {
        Some(_) => "apply failed".to_string(),
        None => hs.last_result.clone().unwrap_or_default(),
    };
    let mut o = obs(
        format!("host/{name}/apply_failed"),
        EventKind::ApplyFailed,
        Some(name),
        subject.clone(),
        if failed == Seen::Fine {
            format!("{name}: {result}")
        } else {
            format!("{result} on {name}: {error}")
        },
        failed,
    );
    o.details = (!error.is_empty())
        .then(|| error.clone())
        .into_iter()
        .collect();
    out.push(o);
    out.push(obs(
        format!("host/{name}/rolled_back"),
        EventKind::RolledBack,
        Some(name),
        subject.clone(),
        if rolled_back == Seen::Fine {
            format!("{name}: {result}")
        } else {
            format!("{name} rolled a change back: {error}")
        },
        rolled_back,
    ));
    let unreachable = match hs.state {
        HostState::Unreachable => Seen::Problem {
            after_secs: n.unreachable_after_secs,
        },
        HostState::Pending => Seen::Unknown,
        _ => Seen::Fine,
    };
    out.push(obs(
        format!("host/{name}/unreachable"),
        EventKind::HostUnreachable,
        Some(name),
        subject.clone(),
        if unreachable == Seen::Fine {
            format!("{name} is reachable again")
        } else {
            format!("{name} is unreachable: {error}")
        },
        unreachable,
    ));
    let drift = match hs.state {
        HostState::Drifted => NOW,
        HostState::Synced => Seen::Fine,
        _ => Seen::Unknown,
    };
    let mut o = obs(
        format!("host/{name}/drift"),
        EventKind::Drift,
        Some(name),
        subject,
        if drift == Seen::Fine {
            format!("{name} matches the config again")
        } else {
            format!(
                "{name} drifted: {} resource(s) differ from the config",
                hs.drift.len()
            )
        },
        drift,
    );
    o.details = hs.drift.clone();
    out.push(o);
    out
}

/// The followed branch's: its newest commit is invalid, denied, or quarantined.
fn commit_observations(st: &FleetStatus) -> Vec<Observation> {
    let mut out = Vec::new();
    let commit = |c: &str| c[..c.len().min(12)].to_string();
    for (key, kind, denied) in [
        ("commit/invalid", EventKind::InvalidCommit, false),
        ("commit/denied", EventKind::PolicyDenied, true),
    ] {
        out.push(match &st.invalid {
            Some(i) if i.denied == denied => {
                let why = if denied {
                    format!("the policies deny it ({} denial(s))", i.errors.len())
                } else {
                    format!("{} problem(s) in the config", i.errors.len())
                };
                let mut o = obs(
                    key.into(),
                    kind,
                    None,
                    format!("commit {}", commit(&i.commit)),
                    format!("commit {} is not applied: {why}", commit(&i.commit)),
                    NOW,
                );
                o.details = i.errors.clone();
                o
            }
            _ => obs(
                key.into(),
                kind,
                None,
                "the branch".into(),
                "a newer commit is valid and allowed".into(),
                Seen::Fine,
            ),
        });
    }
    out.push(match &st.quarantined {
        Some(q) => obs(
            "commit/quarantined".into(),
            EventKind::Quarantined,
            None,
            format!("commit {}", commit(&q.commit)),
            format!("commit {} is quarantined: {}", commit(&q.commit), q.reason),
            NOW,
        ),
        None => obs(
            "commit/quarantined".into(),
            EventKind::Quarantined,
            None,
            "the quarantine".into(),
            "no commit is quarantined any more".into(),
            Seen::Fine,
        ),
    });
    out
}

/// The config repo cannot be fetched.
fn fetch_observation(st: &FleetStatus, n: &Notify, fetch_failing: bool) -> Observation {
    obs(
        "fetch".into(),
        EventKind::FetchStale,
        None,
        format!("the config repo {}", st.repo),
        if fetch_failing {
            st.stale
                .first()
                .cloned()
                .unwrap_or_else(|| format!("cannot fetch {}", st.repo))
        } else {
            format!("{} is fetched again", st.repo)
        },
        if fetch_failing {
            Seen::Problem {
                after_secs: n.fetch_stale_after_secs,
            }
        } else {
            Seen::Fine
        },
    )
}

/// Each maintenance job's last run, per host.
fn job_observations(st: &FleetStatus, fleet: &Fleet) -> Vec<Observation> {
    let mut out = Vec::new();
    for job in &fleet.jobs {
        let run = st
            .schedules
            .get(&job.name)
            .and_then(|s| s.last_run.as_ref());
        for host in &job.hosts {
            let r = run.and_then(|r| r.hosts.iter().find(|h| &h.host == host));
            let seen = match r.map(|r| r.result) {
                Some(HostRunResult::Failed) => NOW,
                Some(HostRunResult::Ok) => Seen::Fine,
                Some(HostRunResult::Skipped) | None => Seen::Unknown,
            };
            let what = if job.alert == EventKind::HealthThreshold {
                "is over a threshold"
            } else {
                "failed"
            };
            let mut o = obs(
                format!("job/{}/{host}", job.name),
                job.alert,
                Some(host),
                format!("job {} on {host}", job.name),
                match (
                    seen,
                    r.and_then(|r| r.error.as_deref())
                        .map(|e| e.trim_end_matches([':', ' '])),
                ) {
                    (Seen::Fine, _) => format!("{} succeeded on {host}", job.name),
                    (_, Some(e)) => format!("{} {what} on {host}: {e}", job.name),
                    (_, None) => format!("{} {what} on {host}", job.name),
                },
                seen,
            );
            if seen == NOW {
                o.details = r.map(|r| r.log_tail.clone()).unwrap_or_default();
            }
            out.push(o);
        }
    }
    out
}

/// A monthly cost above `notify.monthly_cost_above` (in any currency).
pub(super) fn cost(
    cost: &std::collections::BTreeMap<String, f64>,
    n: &Notify,
    key: String,
    what: &str,
) -> Option<Observation> {
    let limit = n.monthly_cost_above?;
    let over: Vec<String> = cost
        .iter()
        .filter(|(_, v)| **v > limit)
        .map(|(c, v)| format!("{v:.2} {c}/month"))
        .collect();
    let seen = if over.is_empty() { Seen::Fine } else { NOW };
    Some(obs(
        format!("cost/{key}"),
        EventKind::CostThreshold,
        None,
        what.to_string(),
        if over.is_empty() {
            format!("{what} costs at most {limit:.2} a month again")
        } else {
            format!(
                "{what} costs {}, above the limit of {limit:.2}",
                over.join(", ")
            )
        },
        seen,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::{HostStatus, Invalid, Quarantine, ScheduleStatus};
    use crate::maintenance::run::{HostRun, JobRun};
    use crate::notify::Alerts;
    use chrono::TimeZone;

    fn fleet() -> Fleet {
        let mut tree = crate::source::ConfigTree::default();
        tree.insert_file(
            "tidekeeper.yaml",
            b"fleet: f\nnotify:\n  unreachable_after: 10m\n".to_vec(),
        );
        for h in ["a", "b"] {
            tree.insert_file(
                format!("hosts/{h}.yaml"),
                b"provider: existing\naddress: 10.0.0.9\n".to_vec(),
            );
        }
        tree.insert_file(
            "schedules.yaml",
            b"jobs:\n  - {name: backup, cron: \"0 3 * * *\", hosts: {names: [a]}, command: {run: x}}\n  - {name: limits, cron: \"*/5 * * * *\", alert: health_threshold, command: {run: x}}\n".to_vec(),
        );
        crate::model::load(&tree).unwrap()
    }

    fn host(name: &str, state: HostState, kind: Option<HostError>) -> HostStatus {
        let mut h = HostStatus::new(name);
        h.state = state;
        h.error_kind = kind;
        h.last_error = kind.map(|k| format!("{k:?}"));
        if state == HostState::Drifted {
            h.drift = vec!["~ file /etc/x".into()];
        }
        h
    }

    fn run(job: &str, results: &[(&str, HostRunResult)]) -> ScheduleStatus {
        ScheduleStatus {
            next_run: None,
            last_run: Some(JobRun {
                job: job.into(),
                kind: "command".into(),
                started: String::new(),
                finished: String::new(),
                ok: false,
                not_started: None,
                hosts: results
                    .iter()
                    .map(|(h, r)| HostRun {
                        host: h.to_string(),
                        result: *r,
                        error: Some("exited with 1: ".into()),
                        rebooted: false,
                        duration_ms: 1,
                        log_tail: vec!["disk 91%".into()],
                    })
                    .collect(),
            }),
        }
    }

    /// The messages for `st` after `prior`: (kind, status, key subject).
    fn fire(
        a: &mut Alerts,
        st: &FleetStatus,
        min: i64,
        fetch_failing: bool,
    ) -> Vec<(String, String)> {
        let f = fleet();
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
            .unwrap()
            + chrono::Duration::minutes(min);
        let obs = observations(st, &f, &f.settings.notify, fetch_failing);
        a.observe("f", "status", t, obs, 0)
            .into_iter()
            .map(|e| {
                (
                    e.kind.name().to_string(),
                    format!("{:?} {}", e.status, e.summary),
                )
            })
            .collect()
    }

    #[test]
    fn every_state_that_needs_a_human_is_an_alert_and_goes_away_when_fixed() {
        let mut a = Alerts::default();
        let mut st = FleetStatus::default();
        st.hosts.insert(
            "a".into(),
            host("a", HostState::Failed, Some(HostError::StepFailed)),
        );
        st.hosts.insert(
            "b".into(),
            host("b", HostState::Failed, Some(HostError::RolledBack)),
        );
        st.quarantined = Some(Quarantine {
            commit: "c".repeat(40),
            reason: "apply failed".into(),
        });
        st.invalid = Some(Invalid {
            commit: "d".repeat(40),
            errors: vec!["deny: x".into()],
            denied: true,
        });
        st.schedules.insert(
            "backup".into(),
            run("backup", &[("a", HostRunResult::Failed)]),
        );
        st.schedules.insert(
            "limits".into(),
            run(
                "limits",
                &[("a", HostRunResult::Ok), ("b", HostRunResult::Failed)],
            ),
        );
        let e = fire(&mut a, &st, 0, false);
        let kinds: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "apply_failed",
                "rolled_back",
                "policy_denied",
                "quarantined",
                "job_failed",
                "health_threshold"
            ],
            "{e:#?}"
        );
        assert!(
            e[4].1.ends_with("backup failed on a: exited with 1"),
            "{e:?}"
        );
        // Unreachable: only after unreachable_after (10m); the apply_failed stays.
        st.hosts.insert(
            "a".into(),
            host("a", HostState::Unreachable, Some(HostError::Unreachable)),
        );
        assert!(fire(&mut a, &st, 1, false).is_empty());
        assert!(fire(&mut a, &st, 10, false).is_empty());
        let e = fire(&mut a, &st, 11, false);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "host_unreachable");
        // The fetch failing: at once here (fetch_stale_after defaults to 30m).
        assert!(fire(&mut a, &st, 12, true).is_empty());
        assert_eq!(fire(&mut a, &st, 42, true)[0].0, "fetch_stale");
        // Everything fixed: one resolution each.
        st.hosts
            .insert("a".into(), host("a", HostState::Synced, None));
        st.hosts
            .insert("b".into(), host("b", HostState::Drifted, None));
        st.quarantined = None;
        st.invalid = None;
        st.schedules
            .insert("backup".into(), run("backup", &[("a", HostRunResult::Ok)]));
        st.schedules
            .insert("limits".into(), run("limits", &[("b", HostRunResult::Ok)]));
        let e = fire(&mut a, &st, 43, false);
        let mut kinds: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "apply_failed",
                "drift",
                "fetch_stale",
                "health_threshold",
                "host_unreachable",
                "job_failed",
                "policy_denied",
                "quarantined",
                "rolled_back"
            ],
            "{e:#?}"
        );
        assert!(
            e.iter()
                .filter(|(k, _)| k != "drift")
                .all(|(_, s)| s.starts_with("Resolved")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|(k, s)| k == "drift" && s.starts_with("Firing"))
        );
        assert!(
            a.active.len() == 1,
            "only the drift is left: {:?}",
            a.active.keys()
        );
    }

    /// Issue 33: a drift check of a quarantined commit found the host
    /// "synced" and resolved the apply_failed alert with nothing changed.
    #[test]
    fn a_failed_apply_stays_firing_through_drift_checks_until_an_apply_succeeds() {
        let mut a = Alerts::default();
        let mut st = FleetStatus::default();
        let mut h = host("a", HostState::Failed, Some(HostError::StepFailed));
        h.failed_apply = Some(crate::daemon::status::FailedApply {
            commit: "c1".into(),
            error: "command will-fail: boom".into(),
            kind: HostError::StepFailed,
        });
        st.hosts.insert("a".into(), h.clone());
        let e = fire(&mut a, &st, 0, false);
        assert!(
            e.iter()
                .any(|(k, s)| k == "apply_failed" && s.starts_with("Firing")),
            "{e:?}"
        );
        // The drift check plans the same commit: no error of its own.
        for state in [HostState::Synced, HostState::Drifted] {
            h.state = state;
            h.last_error = None;
            h.error_kind = None;
            st.hosts.insert("a".into(), h.clone());
            let e = fire(&mut a, &st, 1, false);
            assert!(
                !e.iter().any(|(k, _)| k == "apply_failed"),
                "still firing, not resolved: {e:?}"
            );
        }
        // An apply succeeds: resolved.
        h.failed_apply = None;
        h.state = HostState::Synced;
        st.hosts.insert("a".into(), h);
        let e = fire(&mut a, &st, 2, false);
        assert!(
            e.iter()
                .any(|(k, s)| k == "apply_failed" && s.starts_with("Resolved")),
            "{e:?}"
        );
    }

    #[test]
    fn a_skipped_or_pending_host_keeps_its_alert_and_a_removed_job_resolves_it() {
        let mut a = Alerts::default();
        let mut st = FleetStatus::default();
        st.schedules.insert(
            "backup".into(),
            run("backup", &[("a", HostRunResult::Failed)]),
        );
        st.hosts.insert(
            "a".into(),
            host("a", HostState::Failed, Some(HostError::StepFailed)),
        );
        assert_eq!(fire(&mut a, &st, 0, false).len(), 2);
        st.schedules.insert(
            "backup".into(),
            run("backup", &[("a", HostRunResult::Skipped)]),
        );
        st.hosts.insert(
            "a".into(),
            host("a", HostState::Pending, Some(HostError::Locked)),
        );
        assert!(fire(&mut a, &st, 1, false).is_empty());
        // The job left the config: its alert is resolved as gone.
        let f = fleet();
        let mut f2 = f.clone();
        f2.jobs.retain(|j| j.name != "backup");
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 28, 13, 0, 0)
            .unwrap();
        let e = a.observe(
            "f",
            "status",
            t,
            observations(&st, &f2, &f.settings.notify, false),
            0,
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, EventKind::JobFailed);
        assert!(e[0].summary.contains("gone"), "{e:?}");
    }

    #[test]
    fn a_cost_above_the_limit_is_an_alert() {
        let mut n = Notify::default();
        let cost: std::collections::BTreeMap<String, f64> = [("EUR".to_string(), 12.5)].into();
        assert!(
            super::cost(&cost, &n, "fleet".into(), "the fleet").is_none(),
            "no limit: no observation"
        );
        n.monthly_cost_above = Some(10.0);
        let o = super::cost(&cost, &n, "fleet".into(), "the fleet").unwrap();
        assert_eq!(o.seen, NOW);
        assert!(
            o.summary
                .contains("12.50 EUR/month, above the limit of 10.00"),
            "{}",
            o.summary
        );
        n.monthly_cost_above = Some(20.0);
        assert_eq!(
            super::cost(&cost, &n, "fleet".into(), "the fleet")
                .unwrap()
                .seen,
            Seen::Fine
        );
    }
}
