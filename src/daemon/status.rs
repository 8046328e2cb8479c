//! What the daemon knows and reports: per-host and fleet status, the files
//! it writes to the status branch, the note on a reconciled commit, and the
//! counters behind /metrics. Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::badge::{self, Color};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    Pending,
    Synced,
    Drifted,
    Failed,
    Unreachable,
}

impl HostState {
    pub const ALL: [HostState; 5] = [
        HostState::Pending,
        HostState::Synced,
        HostState::Drifted,
        HostState::Failed,
        HostState::Unreachable,
    ];

    pub fn word(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Synced => "synced",
            HostState::Drifted => "drifted",
            HostState::Failed => "failed",
            HostState::Unreachable => "unreachable",
        }
    }
    fn color(self) -> Color {
        match self {
            HostState::Pending => Color::Blue,
            HostState::Synced => Color::Green,
            HostState::Drifted => Color::Yellow,
            HostState::Failed => Color::Red,
            HostState::Unreachable => Color::Orange,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostStatus {
    pub host: String,
    pub state: HostState,
    /// Last commit fully applied to this host.
    pub applied_commit: Option<String>,
    pub last_reconcile: Option<String>,
    pub last_result: Option<String>,
    /// Addresses of resources that differ from the config (drift).
    #[serde(default)]
    pub drift: Vec<String>,
    pub last_error: Option<String>,
    /// What kind of error `last_error` is (what the daemon acts on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<crate::engine::HostError>,
    pub duration_ms: Option<u64>,
    /// The last apply on this host that failed, until an apply succeeds
    /// there: a drift check that plans the same commit again does not make
    /// the failure go away (issue 33).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_apply: Option<FailedApply>,
}

/// An apply that failed on a host, kept until one succeeds there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedApply {
    pub commit: String,
    pub error: String,
    pub kind: crate::engine::HostError,
}

/// How a host left out of an apply for its shut apply window begins its result.
const WAITING_FOR_WINDOW: &str = "waiting for its apply window";

impl HostStatus {
    /// Left out of the head's apply until its apply window opens.
    pub fn waits_for_window(&self) -> bool {
        self.last_result
            .as_deref()
            .is_some_and(|r| r.starts_with(WAITING_FOR_WINDOW))
    }

    pub fn new(host: &str) -> Self {
        HostStatus {
            host: host.to_string(),
            state: HostState::Pending,
            applied_commit: None,
            last_reconcile: None,
            last_result: None,
            drift: vec![],
            last_error: None,
            error_kind: None,
            duration_ms: None,
            failed_apply: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invalid {
    pub commit: String,
    /// `file:line:column: error[code]: message`, one per problem.
    pub errors: Vec<String>,
    /// Not applied because the policies deny its plan (the errors are the denials).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub denied: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quarantine {
    pub commit: String,
    pub reason: String,
}

/// A commit held by `apply.require_reviewed_plan` (until a reviewed plan of
/// its tree matches or an operator releases it, `tidekeeper release`) or by
/// `apply.apply_windows` (until a window opens, or `release --now`): not
/// applied and not quarantined (nothing failed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Held {
    pub commit: String,
    /// Its tree: a proposal planned with the same tree may release it.
    pub tree: String,
    pub reason: String,
    pub at: String,
    /// Held by the apply windows: when it applies (RFC 3339), if a window
    /// opens within a year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Held by the apply windows (not for want of a reviewed plan).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub windows: bool,
}

/// `tidekeeper release COMMIT --by NAME`: a held commit applied once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Release {
    pub commit: String,
    pub by: String,
    pub at: String,
    /// `--now`: applied outside the apply windows too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub now: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct FleetStatus {
    pub fleet: String,
    pub repo: String,
    pub branch: String,
    /// Newest commit seen on the branch.
    pub head_commit: Option<String>,
    /// Newest commit applied to every host.
    pub applied_commit: Option<String>,
    pub invalid: Option<Invalid>,
    pub quarantined: Option<Quarantine>,
    /// Held for want of a reviewed plan of its tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    pub last_fetch_ok: Option<String>,
    pub last_reconcile: Option<String>,
    /// Why the status may be out of date: fetch failing, webhook secret
    /// mismatch, status pushes losing races.
    #[serde(default)]
    pub stale: Vec<String>,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostStatus>,
    /// Host keys accepted on first use (`ssh.trust_on_first_use`), as
    /// known_hosts lines; pinned from then on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned_host_keys: Vec<String>,
    /// Host keys tidekeeper generated for the cloud servers it created, as
    /// verified on the first login (known_hosts lines, by host). A record:
    /// the pin is the server's own label, and a replaced server gets a new key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generated_host_keys: BTreeMap<String, String>,
    /// The fleet's cloud servers: monthly cost per currency, as last planned.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub monthly_cost: BTreeMap<String, f64>,
    /// Maintenance jobs: last run and next run.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleStatus>,
    /// The last successful write to the status branch. Served live only:
    /// writing it into the branch would make every push a new commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_back: Option<WrittenBack>,
    /// Applies and jobs are stopped: by `suspend: true` in the config, or
    /// by an operator over HTTP (kept on the status branch across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// State files that could not be read at start and were set aside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable_state: Vec<crate::state_file::Unreadable>,
    /// The rollout of the last commit applied in stages: in progress, done
    /// or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    pub commit: String,
    /// 1-based stage now (or last) applied, of `stages`.
    pub stage: usize,
    pub stages: usize,
    /// The hosts of that stage.
    pub hosts: Vec<String>,
    /// `applying`, `pausing`, `done`, or `stopped: <why>`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Suspension {
    /// `config` (tidekeeper.yaml) or `operator` (POST /suspend).
    pub source: String,
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// What the status branch showed after the last successful push, or as
/// read at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WrittenBack {
    pub at: String,
    /// The fleet's applied commit as the pushed `status/fleet.json` has it.
    pub applied_commit: Option<String>,
    /// The commit whose note was written by that push, if any.
    pub noted_commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ScheduleStatus {
    pub next_run: Option<String>,
    pub last_run: Option<crate::maintenance::run::JobRun>,
}

impl FleetStatus {
    /// The fleet in one word, as the fleet badge shows it.
    pub fn state(&self) -> (&'static str, Color) {
        if self
            .invalid
            .as_ref()
            .is_some_and(|i| Some(&i.commit) == self.head_commit.as_ref())
        {
            return ("invalid config", Color::Red);
        }
        if !self.stale.is_empty() {
            return ("stale", Color::Grey);
        }
        if self.suspended.is_some() {
            return ("suspended", Color::Grey);
        }
        let worst = self
            .hosts
            .values()
            .map(|h| h.state)
            .max_by_key(|s| match s {
                HostState::Synced => 0,
                HostState::Pending => 1,
                HostState::Drifted => 2,
                HostState::Unreachable => 3,
                HostState::Failed => 4,
            })
            .unwrap_or(HostState::Pending);
        (worst.word(), worst.color())
    }

    /// Files for the status branch: JSON and badges.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let (word, color) = self.state();
        let mut fleet = serde_json::to_value(self).expect("status serializes");
        fleet["state"] = word.into();
        if let Some(o) = fleet.as_object_mut() {
            o.remove("written_back");
        }
        out.insert(
            "status/fleet.json".into(),
            serde_json::to_vec_pretty(&fleet).expect("json"),
        );
        out.insert(
            "badges/fleet.svg".into(),
            badge::render(&self.fleet, word, color).into_bytes(),
        );
        if !self.learned_host_keys.is_empty() {
            let mut text = String::from(
                "# Host keys tidekeeper accepted on first use. Copy them into known_hosts.\n",
            );
            for l in &self.learned_host_keys {
                text.push_str(l);
                text.push('\n');
            }
            out.insert("known_hosts.learned".into(), text.into_bytes());
        }
        if !self.generated_host_keys.is_empty() {
            let mut text = String::from(
                "# Host keys tidekeeper generated for the cloud servers it created.\n",
            );
            for l in self.generated_host_keys.values() {
                text.push_str(l);
                text.push('\n');
            }
            out.insert("known_hosts.generated".into(), text.into_bytes());
        }
        for (name, sch) in &self.schedules {
            out.insert(
                format!("status/schedules/{name}.json"),
                serde_json::to_vec_pretty(sch).expect("json"),
            );
            let (word, color) = match &sch.last_run {
                None => ("scheduled", Color::Blue),
                Some(r) if r.not_started.is_some() => ("not started", Color::Yellow),
                Some(r) if r.ok => ("ok", Color::Green),
                Some(_) => ("failed", Color::Red),
            };
            out.insert(
                format!("badges/schedule-{name}.svg"),
                badge::render(name, word, color).into_bytes(),
            );
        }
        for (name, h) in &self.hosts {
            out.insert(
                format!("status/hosts/{name}.json"),
                serde_json::to_vec_pretty(h).expect("json"),
            );
            out.insert(
                format!("badges/{name}.svg"),
                badge::render(name, h.state.word(), h.state.color()).into_bytes(),
            );
        }
        out
    }
}

/// Upper bounds of the reconcile duration buckets, in seconds: a no-op
/// is well under a second, a cold apply with packages minutes.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A Prometheus histogram: counts per bucket (not cumulative), sum, count.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// Counters for /metrics.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// (host, result) → count.
    pub reconciles: BTreeMap<(String, String), u64>,
    /// host → its reconcile durations.
    pub durations: BTreeMap<String, Histogram>,
    pub fetch_failures: u64,
    pub fetches: u64,
    pub webhook_rejected: u64,
    pub webhook_accepted: u64,
    pub status_push_failures: u64,
    /// (job, result) → count.
    pub maintenance_runs: BTreeMap<(String, String), u64>,
    /// Host errors by kind ([`crate::engine::HostError::metric_label`]).
    pub host_errors: BTreeMap<&'static str, u64>,
    /// Requests tried again by the error policy, by reason.
    pub requeues: BTreeMap<&'static str, u64>,
    /// When the config repo was last fetched.
    pub last_fetch_unix: Option<i64>,
    /// When a commit was last applied to every host.
    pub last_applied_unix: Option<i64>,
    /// Requests due now (set when scraped).
    pub queue: u64,
    /// job → when it last ran successfully.
    pub job_last_success_unix: BTreeMap<String, i64>,
    /// Badges served (the status page's images, README badges), by badge.
    pub badges_served: BTreeMap<String, u64>,
}

/// The git note on a reconciled commit.
pub fn note(commit: &str, summary: &str, hosts: &[HostStatus], seconds: f64) -> String {
    let mut s = format!("tidekeeper reconcile of {commit}\n\n{summary}\n");
    for h in hosts {
        let _ = write!(s, "{:<20} {:<12}", h.host, h.state.word());
        if let Some(r) = &h.last_result {
            let _ = write!(s, " {r}");
        }
        if let Some(e) = &h.last_error {
            let _ = write!(s, " — {}", e.lines().next().unwrap_or(""));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\ntook {seconds:.1}s");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_branch_never_holds_when_it_was_written() {
        let mut st = FleetStatus {
            fleet: "f".into(),
            applied_commit: Some("abc".into()),
            ..Default::default()
        };
        let before = st.files();
        st.written_back = Some(WrittenBack {
            at: "2026-11-23T10:00:00Z".into(),
            applied_commit: Some("abc".into()),
            noted_commit: None,
        });
        // Otherwise every push would change the branch and push again.
        assert_eq!(st.files(), before);
        let live = serde_json::to_value(&st).unwrap();
        assert_eq!(live["written_back"]["applied_commit"], "abc");
    }
}
