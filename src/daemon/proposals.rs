//! Proposals (pull-request heads, `--proposals` refs): each head commit is
//! planned once, under the trusted base (see [`crate::proposal`]), noted on
//! its commit and reported to the forge. The record of what was planned and
//! what is still to be reported lives in the state directory, so neither a
//! restart nor a forge outage plans a head again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{Instrument, info, info_span, warn};

use super::Loop;
use super::scheduler::{Again, Request, Requeue};
use crate::engine::{self, HostResult};
use crate::reconcile;
use crate::source::ConfigTree;

/// A report owed to the forge for a planned head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub state: String,
    pub description: String,
    /// The plan comment, or its first part.
    pub comment: String,
    /// Its other parts, when the plan is too long for one comment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
    pub context: String,
    pub marker: String,
    /// The head's commit time: a late plan never overwrites a newer comment.
    pub time: i64,
}

/// The plan reviewed on a proposal: what its merge is compared with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reviewed {
    /// The tree of the planned head.
    pub tree: String,
    pub digest: String,
    /// `host action kind id`, one per change.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<Reviewed>,
    /// Still to be sent to the forge (it was down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// Proposal ref → the head planned last.
pub type Record = BTreeMap<String, Seen>;

const FILE: &str = "proposals.json";

/// The record of planned heads; an unreadable one is set aside and named
/// (the proposals are then planned again: that rebuilds it).
pub fn load_record(state_dir: &Path) -> (Record, Option<crate::state_file::Unreadable>) {
    crate::state_file::read(&state_dir.join(FILE))
}

/// Written atomically: a crash leaves the old record.
fn save_record(state_dir: &Path, r: &Record) {
    if let Err(e) = crate::state_file::write(&state_dir.join(FILE), r) {
        warn!(error = %e, "cannot record the planned proposals in the state directory");
    }
}

/// The plan of one proposal head: the note for its commit and the report
/// for the forge (when the base configures one).
struct Planned {
    note: String,
    report: Option<Report>,
    reviewed: Option<Reviewed>,
    /// The commit status it earns (success, failure, error) and why.
    verdict: (String, String),
}

impl Loop {
    /// Fetch the proposal refs; ask for a `Proposal(ref)` request for each
    /// new head and each report a forge outage held back; forget deleted refs.
    pub(super) async fn look_at_proposals(&mut self) {
        if self.cfg.proposals.is_empty() {
            return;
        }
        let patterns = self.cfg.proposals.clone();
        let Ok(heads) = self.blocking(move |m| m.fetch_proposals(&patterns)).await else {
            return; // unreachable remote: the fetch reports it
        };
        let before = self.proposals.clone();
        self.proposals
            .retain(|name, _| heads.iter().any(|(n, _, _)| n == name));
        self.shared
            .board
            .lock()
            .unwrap()
            .history
            .proposals
            .retain(|name, _| heads.iter().any(|(n, _, _)| n == name));
        for gone in before.keys().filter(|n| !self.proposals.contains_key(*n)) {
            // A closed proposal's alerts are resolved.
            self.shared
                .notifier
                .observe(&format!("proposal/{gone}"), self.clock.now(), vec![]);
        }
        if self.proposals != before {
            save_record(&self.cfg.state_dir, &self.proposals);
        }
        self.proposal_heads = heads
            .into_iter()
            .map(|(name, oid, time)| (name, (oid.to_string(), time)))
            .collect();
        for (name, (sha, _)) in &self.proposal_heads {
            let seen = self.proposals.get(name);
            let new = seen.is_none_or(|s| s.commit != *sha);
            let owed = seen.is_some_and(|s| s.report.is_some());
            let req = Request::Proposal(name.clone());
            // An owed report keeps its own backoff; a new head goes at once.
            if new || (owed && self.sched.when(&req).is_none()) {
                self.sched.now(req);
            }
        }
    }

    /// One proposal ref: plan its head if it is new, note the plan on its
    /// commit, and report it. `Err` when the forge did not take the report
    /// (it is kept and sent on the next try, never planned again).
    pub(super) async fn plan_proposal_ref(&mut self, name: &str) -> Result<Requeue, Again> {
        let Some((sha, time)) = self.proposal_heads.get(name).cloned() else {
            return Ok(Requeue::Done); // the ref is gone
        };
        {
            let name = name.to_string();
            let seen = self.proposals.get(&name).cloned();
            if seen.as_ref().is_none_or(|s| s.commit != sha) {
                // Without a good base there is nothing to plan a proposal under.
                let Some((base_commit, _, _)) = self.good.clone() else {
                    return Ok(Requeue::Done);
                };
                let span = info_span!("proposal", r#ref = %name, commit = %&sha[..12], base = %&base_commit[..12]);
                let planned = self.plan_one(&name, &sha, time).instrument(span).await;
                {
                    let mut board = self.shared.board.lock().unwrap();
                    board.history.proposals.insert(
                        name.clone(),
                        super::history::ProposalPlan {
                            commit: sha.clone(),
                            at: super::now(),
                            state: planned.verdict.0.clone(),
                            description: planned.verdict.1.clone(),
                        },
                    );
                    board.save();
                }
                let commit = sha.clone();
                let note = planned.note;
                if let Err(e) = self
                    .blocking(move |m| {
                        m.push_note(git2::Oid::from_str(&commit).expect("sha"), &note)
                    })
                    .await
                {
                    warn!(error = %e, "could not note the proposal's plan");
                }
                self.proposals.insert(
                    name.clone(),
                    Seen {
                        commit: sha.clone(),
                        report: planned.report,
                        reviewed: planned.reviewed,
                    },
                );
                save_record(&self.cfg.state_dir, &self.proposals);
            }
        }
        self.send_report(name, &sha).await
    }

    /// Send the report owed for `name` at `sha`, if any; kept on failure.
    async fn send_report(&mut self, name: &str, sha: &str) -> Result<Requeue, Again> {
        let Some(report) = self.proposals.get(name).and_then(|s| s.report.clone()) else {
            return Ok(Requeue::Done);
        };
        // The forge is always the base's: a proposal cannot redirect reports.
        let Some(settings) = self.good.as_ref().and_then(|g| g.1.settings.forge.clone()) else {
            return Ok(Requeue::Done);
        };
        let pr = crate::forge::pr_number(name);
        let forge = self.forge(&settings);
        let (sha2, r) = (sha.to_string(), report.clone());
        let sent = async move {
            let forge = forge?;
            forge
                .status(&sha2, &r.context, &r.state, &r.description)
                .await?;
            let parts: Vec<String> = std::iter::once(r.comment.clone())
                .chain(r.more.iter().cloned())
                .collect();
            if let Some(pr) = pr
                && !forge.upsert_comments(pr, &r.marker, &parts, &sha2).await?
            {
                tracing::debug!(
                    pr,
                    "the PR comment already shows this plan, or the head moved on"
                );
            }
            Ok::<(), crate::forge::ForgeError>(())
        }
        .await;
        match sent {
            Ok(()) => {
                self.shared.clear_stale("forge");
                if let Some(s) = self.proposals.get_mut(name) {
                    s.report = None;
                }
                save_record(&self.cfg.state_dir, &self.proposals);
                Ok(Requeue::Done)
            }
            Err(e) => {
                // Kept: sent again once the forge answers; never planned again.
                warn!(error = %e, "could not report the plan to the forge");
                self.shared
                    .note_stale("forge", format!("forge unreachable: {e}"));
                Err(Again::Forge)
            }
        }
    }

    /// Plan one proposal head under the last good commit of the branch.
    async fn plan_one(&mut self, name: &str, sha: &str, time: i64) -> Planned {
        let (base_commit, base, base_policies) = self.good.clone().expect("checked by the caller");
        let fleet_name = base.name.clone();
        let marker = crate::report::marker(&fleet_name);
        let context = format!("tidekeeper/{fleet_name}/plan");
        let with_forge = base.settings.forge.is_some();
        let loaded = self.load_untrusted(sha).await;
        let (proposal, policies) = match loaded {
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(|e| base.redact(e)).collect();
                info!(errors = errors.len(), "proposal has an invalid config");
                let report = with_forge.then(|| Report {
                    state: "failure".into(),
                    description: "invalid config".into(),
                    comment: format!(
                        "{marker}\n**Invalid config**\n\n```\n{}\n```\n",
                        errors.join("\n")
                    ),
                    more: vec![],
                    context: context.clone(),
                    marker: marker.clone(),
                    time,
                });
                return Planned {
                    note: format!(
                        "tidekeeper plan for {name} at {sha}: invalid config\n\n{}\n",
                        errors.join("\n")
                    ),
                    report,
                    reviewed: None,
                    verdict: ("failure".into(), "invalid config".into()),
                };
            }
            Ok(x) => x,
        };
        let names = (!self.cfg.hosts.is_empty()).then(|| {
            proposal
                .hosts
                .iter()
                .map(|h| h.name.clone())
                .filter(|n| self.cfg.hosts.contains(n))
                .collect()
        });
        let opts = self.options(&base);
        let b = base.clone();
        let (cloud, verdict, after_merge, results) = self
            .clock
            .io(async move {
                let base = b;
                let p = reconcile::plan_proposal(
                    &base,
                    &base_policies,
                    proposal,
                    &policies,
                    names,
                    opts,
                )
                .await;
                let cloud = p.plan.cloud.clone();
                (cloud, p.verdict, p.after_merge, p.plan.hosts)
            })
            .await;
        let refs: Vec<&HostResult> = results.iter().collect();
        info!(denied = verdict.deny.len(), "proposal planned");
        self.proposal_alerts(name, &verdict, cloud.as_ref());
        let (digest, lines) = reconcile::plan_digest(cloud.as_ref(), &refs);
        let c = sha.to_string();
        let tree = self.blocking(move |m| m.tree_of(&c)).await;
        let reviewed = tree.map(|tree| Reviewed {
            tree,
            digest: digest.clone(),
            lines,
        });
        let stamp = format!(
            "\nPlan digest: `{digest}` (a merge with this tree is compared with this plan)\n"
        );
        let review = crate::report::Review {
            fleet: &fleet_name,
            commit: sha,
            cloud: cloud.as_ref(),
            results: &refs,
            verdict: &verdict,
            after_merge: &after_merge,
        };
        let md = crate::report::markdown(&review, usize::MAX);
        let mut json = reconcile::json(cloud.as_ref(), &refs);
        json["policy"] = serde_json::to_value(&verdict).unwrap_or_default();
        json["ref"] = name.into();
        json["base"] = base_commit.clone().into();
        json["after_merge"] = serde_json::to_value(&after_merge).unwrap_or_default();
        json["digest"] = digest.clone().into();
        let note = base.redact(&format!(
            "{md}{stamp}\n<!-- plan as JSON -->\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        ));
        let t = reconcile::totals(cloud.as_ref(), &refs);
        let (state, desc) = if verdict.blocks() {
            let first = verdict
                .deny
                .first()
                .or(verdict.errors.first())
                .cloned()
                .unwrap_or_default();
            // The policy's name first: the description is cut at 140 characters.
            let desc = match first.rsplit_once(" (policy ") {
                Some((msg, policy)) => {
                    format!("denied by {}: {msg}", policy.trim_end_matches(')'))
                }
                None => format!("denied: {first}"),
            };
            ("failure", desc)
        } else if t.errors > 0 {
            (
                "error",
                format!("{} host(s) or server(s) could not be planned", t.errors),
            )
        } else {
            (
                "success",
                engine::render::summary_line(&t)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            )
        };
        let report = with_forge.then(|| {
            // As many comments as the plan needs; the digest stamp on the first.
            let mut parts =
                crate::report::comments(&review, crate::report::GITHUB_LIMIT - stamp.len() - 200)
                    .into_iter()
                    .map(|p| base.redact(&p));
            let first = parts.next().unwrap_or_default();
            Report {
                state: state.into(),
                description: base.redact(&desc),
                comment: format!("{first}{stamp}"),
                more: parts.collect(),
                context,
                marker,
                time,
            }
        });
        Planned {
            note,
            report,
            reviewed,
            verdict: (state.to_string(), base.redact(&desc)),
        }
    }

    /// A proposal denied by policy, or raising the monthly cost above the
    /// limit, is an alert until a newer head is allowed (or it is closed).
    fn proposal_alerts(
        &self,
        name: &str,
        verdict: &crate::policy::Verdict,
        cloud: Option<&crate::cloud::plan::CloudPlan>,
    ) {
        use crate::notify::{EventKind, Observation, Seen};
        let n = self.shared.notifier.settings();
        if n.sinks.is_empty() {
            return;
        }
        let denied = verdict.blocks();
        let mut obs = vec![Observation {
            key: "policy".into(),
            kind: EventKind::PolicyDenied,
            host: None,
            subject: format!("proposal {name}"),
            summary: if denied {
                format!("the policies deny proposal {name}")
            } else {
                format!("the policies allow proposal {name} now")
            },
            details: verdict
                .deny
                .iter()
                .chain(&verdict.errors)
                .cloned()
                .collect(),
            seen: if denied {
                Seen::Problem { after_secs: 0 }
            } else {
                Seen::Fine
            },
        }];
        if let Some(c) = cloud {
            let raised = c
                .cost
                .iter()
                .filter(|(_, l)| l.delta() > 0.0)
                .map(|(cur, l)| (cur.to_string(), l.proposed))
                .collect();
            obs.extend(super::alerts::cost(
                &raised,
                &n,
                "plan".into(),
                &format!("proposal {name}"),
            ));
        }
        self.shared
            .notifier
            .observe(&format!("proposal/{name}"), self.clock.now(), obs);
    }

    /// The proposal whose reviewed plan is of the same tree as `commit`.
    pub(super) async fn reviewed_for(&self, commit: &str) -> Option<(String, Reviewed)> {
        let c = commit.to_string();
        let tree = self.blocking(move |m| m.tree_of(&c)).await?;
        self.proposals.iter().find_map(|(name, s)| {
            s.reviewed
                .as_ref()
                .filter(|r| r.tree == tree)
                .map(|r| (name.clone(), r.clone()))
        })
    }

    /// A proposal's config and policies, never decrypted; or its errors.
    async fn load_untrusted(
        &self,
        commit: &str,
    ) -> Result<(crate::model::Fleet, Vec<(String, String)>), Vec<String>> {
        let path = self.mirror.lock().unwrap().path.clone();
        let c = commit.to_string();
        tokio::task::spawn_blocking(move || {
            let tree = ConfigTree::from_git(&path, &c).map_err(|e| vec![e.to_string()])?;
            let fleet = crate::model::load(&tree).map_err(|d| super::lines(&d))?;
            Ok((fleet, tree.policies()))
        })
        .await
        .expect("load task")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_round_trip_through_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("tk-proposals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Record::new();
        r.insert(
            "refs/pull/1/head".into(),
            Seen {
                commit: "abc".into(),
                report: Some(Report {
                    state: "success".into(),
                    description: "d".into(),
                    comment: "c".into(),
                    more: vec!["part 2".into()],
                    context: "x".into(),
                    marker: "m".into(),
                    time: 5,
                }),
                reviewed: Some(Reviewed {
                    tree: "t".into(),
                    digest: "d".into(),
                    lines: vec!["web + file /etc/a".into()],
                }),
            },
        );
        save_record(&dir, &r);
        assert_eq!(load_record(&dir), (r, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_record_is_empty_and_a_garbled_one_is_set_aside_and_named() {
        let dir = std::env::temp_dir().join(format!("tk-proposals-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load_record(&dir), (Record::new(), None));
        std::fs::write(dir.join(FILE), "{not json").unwrap();
        let (r, unreadable) = load_record(&dir);
        assert!(r.is_empty());
        assert!(
            unreadable
                .unwrap()
                .kept_as
                .ends_with("proposals.json.unreadable"),
            "issue 33: never dropped without a word"
        );
        assert_eq!(
            std::fs::read(dir.join("proposals.json.unreadable")).unwrap(),
            b"{not json"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
