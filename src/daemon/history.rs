//! What the daemon did over time, for the dashboard: its runs (applies and
//! drift checks), each host's recent runs and last plan, the fleet's cost
//! per day, and the proposals it planned. Pure; kept in the state
//! directory (`history.json`), bounded so it never grows with uptime.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::status::HostState;

/// Runs kept (a run every 10 minutes is about a week).
const RUNS: usize = 1000;
/// Runs kept per host, for its page.
const HOST_RUNS: usize = 25;
/// Days of cost kept.
const COST_DAYS: usize = 400;
/// A host's last plan is cut beyond this (its page shows it whole up to here).
const PLAN_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    pub runs: VecDeque<Run>,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostHistory>,
    #[serde(default)]
    pub cost: VecDeque<CostPoint>,
    /// Proposal ref → its last plan's verdict.
    #[serde(default)]
    pub proposals: BTreeMap<String, ProposalPlan>,
    /// Held commits operators released (`tidekeeper release`), newest last.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub releases: VecDeque<super::status::Release>,
    /// What operators and alerts did (suspend, resume, retry, release,
    /// quarantine, alerts firing and resolved), newest last.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub events: VecDeque<Event>,
}

/// Events kept.
const EVENTS: usize = 200;

/// One thing that happened to the fleet as a whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// RFC 3339, UTC.
    pub at: String,
    /// `suspended`, `resumed`, `retried`, `released`, `quarantined`,
    /// `alert firing`, `alert resolved`.
    pub kind: String,
    pub text: String,
}

/// A commit's message (first line) and author, as the dashboard lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitInfo {
    pub subject: String,
    pub author: String,
}

/// Releases kept.
const RELEASES: usize = 100;

impl History {
    /// An operator released a held commit.
    pub fn released(&mut self, r: super::status::Release) {
        let how = if r.now {
            ", outside the apply windows"
        } else {
            ""
        };
        let text = format!(
            "{} released held commit {}{how}",
            r.by,
            &r.commit[..r.commit.len().min(12)]
        );
        self.event(&r.at, "released", text);
        self.releases.push_back(r);
        while self.releases.len() > RELEASES {
            self.releases.pop_front();
        }
    }
}

impl History {
    /// Record an event, dropping the oldest past the limit.
    pub fn event(&mut self, at: &str, kind: &str, text: String) {
        self.events.push_back(Event {
            at: at.to_string(),
            kind: kind.to_string(),
            text,
        });
        while self.events.len() > EVENTS {
            self.events.pop_front();
        }
    }
}

/// One reconcile of the fleet (or of the hosts a trigger asked for).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    /// RFC 3339, UTC.
    pub at: String,
    pub commit: String,
    /// An apply (else a drift check: planned only).
    pub apply: bool,
    pub seconds: f64,
    /// Resources changed (counted as plans count them).
    pub changes: usize,
    /// Resources found drifted (drift checks).
    pub drift: usize,
    pub failed: usize,
    pub hosts: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostHistory {
    pub runs: VecDeque<HostRun>,
    /// The last plan that had changes, as text with its diffs (redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan: Option<LastPlan>,
    /// Monthly cost of its server, when it has one: (provider, amount, currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<(String, f64, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostRun {
    pub at: String,
    pub commit: String,
    pub apply: bool,
    pub state: HostState,
    pub result: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastPlan {
    pub at: String,
    pub commit: String,
    pub apply: bool,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CostPoint {
    /// YYYY-MM-DD (UTC).
    pub day: String,
    pub cost: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProposalPlan {
    pub commit: String,
    pub at: String,
    /// The commit status: success, failure or error.
    pub state: String,
    pub description: String,
    /// The head commit's message (first line) and author.
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub author: String,
    /// The plan as text with its diffs (redacted), cut like a host's plan;
    /// not the markdown of the forge's comment or the note. (Records from
    /// before kept that markdown as `plan`: it is not read.)
    #[serde(default)]
    pub text: String,
    /// The policies' denials and errors.
    #[serde(default)]
    pub denials: Vec<String>,
    /// The policies' warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Currency → the proposed monthly cost, where the proposal raises it.
    #[serde(default)]
    pub raised_cost: BTreeMap<String, f64>,
    /// The cost table: the servers whose price changes, the fleet's totals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cost: Vec<crate::cloud::plan::CostRow>,
    /// Why the head has no plan (an invalid config, a worker that died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplanned: Option<super::worker::Unplanned>,
}

/// `text` cut to at most [`PLAN_BYTES`] on a character boundary, saying so.
pub(crate) fn capped_plan(mut text: String) -> String {
    if text.len() > PLAN_BYTES {
        let mut cut = PLAN_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut: the plan is longer)\n");
    }
    text
}

/// What one host's part of a run adds.
pub struct HostEntry {
    pub run: HostRun,
    /// Its plan as text, when it had changes.
    pub plan: Option<String>,
    pub cost: Option<(String, f64, String)>,
}

impl History {
    /// Add a run and its hosts' entries, dropping the oldest past the limits.
    pub fn record(&mut self, run: Run, hosts: Vec<(String, HostEntry)>) {
        for (name, e) in hosts {
            let h = self.hosts.entry(name).or_default();
            if let Some(text) = e.plan {
                let text = capped_plan(text);
                h.last_plan = Some(LastPlan {
                    at: e.run.at.clone(),
                    commit: e.run.commit.clone(),
                    apply: e.run.apply,
                    text,
                });
            }
            if e.cost.is_some() {
                h.cost = e.cost;
            }
            h.runs.push_back(e.run);
            while h.runs.len() > HOST_RUNS {
                h.runs.pop_front();
            }
        }
        self.runs.push_back(run);
        while self.runs.len() > RUNS {
            self.runs.pop_front();
        }
    }

    /// The fleet's monthly cost as of `day` (the day's last value wins).
    pub fn cost_on(&mut self, day: &str, cost: &BTreeMap<String, f64>) {
        if cost.is_empty() {
            return;
        }
        match self.cost.back_mut() {
            Some(p) if p.day == day => p.cost = cost.clone(),
            _ => self.cost.push_back(CostPoint {
                day: day.to_string(),
                cost: cost.clone(),
            }),
        }
        while self.cost.len() > COST_DAYS {
            self.cost.pop_front();
        }
    }

    /// Hosts no longer in the fleet leave the history too.
    pub fn keep_hosts(&mut self, keep: impl Fn(&str) -> bool) {
        self.hosts.retain(|h, _| keep(h));
    }

    /// Changes applied and drift found per day, for the last `days` days
    /// up to `today` (YYYY-MM-DD), oldest first: (day, changes, drift).
    pub fn per_day(
        &self,
        today: chrono::NaiveDate,
        days: u32,
    ) -> Vec<(chrono::NaiveDate, usize, usize)> {
        let mut out: Vec<(chrono::NaiveDate, usize, usize)> = (0..days)
            .rev()
            .map(|i| (today - chrono::Days::new(i as u64), 0, 0))
            .collect();
        for r in &self.runs {
            let Some(day) =
                r.at.get(..10)
                    .and_then(|d| d.parse::<chrono::NaiveDate>().ok())
            else {
                continue;
            };
            if let Some(slot) = out.iter_mut().find(|(d, _, _)| *d == day) {
                slot.1 += r.changes;
                slot.2 += r.drift;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(at: &str, changes: usize, drift: usize) -> Run {
        Run {
            at: at.into(),
            commit: "c".into(),
            apply: drift == 0,
            seconds: 1.0,
            changes,
            drift,
            failed: 0,
            hosts: 1,
        }
    }

    fn entry(at: &str, plan: Option<&str>) -> HostEntry {
        HostEntry {
            run: HostRun {
                at: at.into(),
                commit: "c".into(),
                apply: true,
                state: HostState::Synced,
                result: "ok".into(),
                ms: 5,
            },
            plan: plan.map(str::to_string),
            cost: None,
        }
    }

    #[test]
    fn bounded_and_the_last_plan_with_changes_is_kept() {
        let mut h = History::default();
        for i in 0..(RUNS + 10) {
            let plan = (i == 3).then_some("+ web file /etc/x");
            h.record(
                run("2026-11-28T10:00:00Z", 1, 0),
                vec![("web".into(), entry("t", plan))],
            );
        }
        assert_eq!(h.runs.len(), RUNS);
        assert_eq!(h.hosts["web"].runs.len(), HOST_RUNS);
        assert_eq!(
            h.hosts["web"].last_plan.as_ref().unwrap().text,
            "+ web file /etc/x"
        );
        h.record(
            run("t", 1, 0),
            vec![("web".into(), entry("t", Some(&"x".repeat(PLAN_BYTES * 2))))],
        );
        let text = &h.hosts["web"].last_plan.as_ref().unwrap().text;
        assert!(text.len() < PLAN_BYTES + 100 && text.ends_with("longer)\n"));
        h.keep_hosts(|n| n != "web");
        assert!(h.hosts.is_empty());
    }

    #[test]
    fn a_proposal_recorded_with_its_markdown_note_loads_without_it() {
        // As recorded before the page had its plan as text: the note's markdown.
        let old = r#"{"runs": [], "proposals": {"refs/pull/7/head": {"commit": "c", "at": "t",
            "state": "failure", "description": "d", "plan": "<!-- tidekeeper:acme -->\n```diff\n+x\n```\n",
            "denials": ["no"], "raised_cost": {"EUR": 7.55}}}}"#;
        let h: History = serde_json::from_str(old).unwrap();
        let p = &h.proposals["refs/pull/7/head"];
        assert_eq!((p.text.as_str(), p.denials.len()), ("", 1));
        assert!(p.cost.is_empty() && p.unplanned.is_none());
    }

    #[test]
    fn changes_and_drift_add_up_per_day_and_cost_is_one_point_a_day() {
        let mut h = History::default();
        h.record(run("2026-11-27T23:59:00Z", 3, 0), vec![]);
        h.record(run("2026-11-28T01:00:00Z", 2, 0), vec![]);
        h.record(run("2026-11-28T02:00:00Z", 0, 4), vec![]);
        h.record(run("2026-10-01T02:00:00Z", 9, 9), vec![]);
        let today = "2026-11-28".parse().unwrap();
        let days = h.per_day(today, 3);
        assert_eq!(days.len(), 3);
        assert_eq!((days[1].1, days[1].2), (3, 0));
        assert_eq!((days[2].1, days[2].2), (2, 4));
        let eur = |v: f64| BTreeMap::from([("EUR".to_string(), v)]);
        h.cost_on("2026-11-27", &eur(10.0));
        h.cost_on("2026-11-28", &eur(12.0));
        h.cost_on("2026-11-28", &eur(13.0));
        assert_eq!(h.cost.len(), 2);
        assert_eq!(h.cost[1].cost["EUR"], 13.0);
    }
}
