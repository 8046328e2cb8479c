//! Proposals (pull-request heads, `--proposals` refs): each head commit is
//! planned once, under the trusted base (see [`crate::proposal`]), noted on
//! its commit and reported to the forge. The record of what was planned and
//! what is still to be reported lives in the state directory, so neither a
//! restart nor a forge outage plans a head again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::scheduler::{Again, Request, Requeue};
use super::{Ctx, State};

pub(super) use super::worker::{Report, Reviewed};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct Seen {
    pub commit: String,
    /// Recorded before its worker starts, cleared with its verdict: a head
    /// whose planning took the daemon down is never planned again by itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub planning: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<Reviewed>,
    /// Still to be sent to the forge (it was down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// Proposal ref → the head planned last.
pub(super) type Record = BTreeMap<String, Seen>;

const FILE: &str = "proposals.json";

/// The record of planned heads; an unreadable one is set aside and named
/// (the proposals are then planned again: that rebuilds it).
pub(super) fn load_record(state_dir: &Path) -> (Record, Option<crate::state_file::Unreadable>) {
    crate::state_file::read(&state_dir.join(FILE))
}

/// Written atomically: a crash leaves the old record.
fn save_record(state_dir: &Path, r: &Record) {
    if let Err(e) = crate::state_file::write(&state_dir.join(FILE), r) {
        warn!(error = %e, "cannot record the planned proposals in the state directory");
    }
}

/// A proposal's worker finished (or died): its verdict, back to the loop.
pub(super) struct ProposalDone {
    pub name: String,
    pub sha: String,
    pub result: Result<super::worker::Planned, String>,
}

/// Fetch the proposal refs; ask for a `Proposal(ref)` request for each
/// new head and each report a forge outage held back; forget deleted refs.
pub(super) async fn look_at_proposals(ctx: &Ctx, state: &mut State) {
    if ctx.cfg.proposals.is_empty() {
        return;
    }
    let patterns = ctx.cfg.proposals.clone();
    let Ok(heads) = ctx.blocking(move |m| m.fetch_proposals(&patterns)).await else {
        return; // unreachable remote: the fetch reports it
    };
    let before = state.proposals.record.clone();
    state
        .proposals
        .record
        .retain(|name, _| heads.iter().any(|(n, _, _)| n == name));
    ctx.shared
        .board
        .lock()
        .unwrap()
        .history
        .proposals
        .retain(|name, _| heads.iter().any(|(n, _, _)| n == name));
    for gone in before
        .keys()
        .filter(|n| !state.proposals.record.contains_key(*n))
    {
        // A closed proposal's alerts are resolved.
        let changed =
            ctx.shared
                .notifier
                .observe(&format!("proposal/{gone}"), ctx.clock.now(), vec![]);
        super::alert_events(ctx, &changed);
    }
    if state.proposals.record != before {
        save_record(&ctx.cfg.state_dir, &state.proposals.record);
    }
    state.proposals.heads = heads
        .into_iter()
        .map(|(name, oid, _)| (name, oid.to_string()))
        .collect();
    approved_held(ctx, state).await;
    for (name, sha) in &state.proposals.heads {
        let seen = state.proposals.record.get(name);
        let new = seen.is_none_or(|s| s.commit != *sha);
        // Owed: a report the forge did not take, or the verdict of a head
        // whose planning never finished.
        let owed = seen.is_some_and(|s| {
            s.report.is_some() || (s.planning && !state.proposals.planning.contains_key(name))
        });
        let req = Request::Proposal(name.clone());
        // An owed report keeps its own backoff; a new head goes at once.
        if new || (owed && ctx.sched.when(&req).is_none()) {
            ctx.sched.now(req);
        }
    }
}

/// One proposal ref: if its head is new, start a worker to plan it (at
/// most `proposals.workers` at once) and return at once — the loop never
/// waits on a proposal; the verdict comes back as a [`ProposalDone`].
/// Otherwise send the report still owed, if any.
pub(super) async fn plan_proposal_ref(
    ctx: &Ctx,
    state: &mut State,
    name: &str,
) -> Result<Requeue, Again> {
    let Some(sha) = state.proposals.heads.get(name).cloned() else {
        return Ok(Requeue::Done); // the ref is gone
    };
    let seen = state.proposals.record.get(name).cloned();
    if state.proposals.planning.contains_key(name) {
        // Its worker is still at work on an older head: after it.
        return Ok(Requeue::After(std::time::Duration::from_secs(1)));
    }
    if let Some(s) = &seen
        && s.commit == sha
    {
        if s.planning {
            // Recorded as planning, and no worker: the daemon stopped
            // while it planned (or the worker took it down). Never again
            // by itself: the verdict says so, once.
            warn!(r#ref = %name, commit = %&sha[..12], "a proposal head whose planning did not finish is not planned again");
            let why = "its planning did not finish (the daemon stopped while planning it); push a new commit to plan again";
            proposal_planned(
                ctx,
                state,
                ProposalDone {
                    name: name.to_string(),
                    sha,
                    result: Err(why.into()),
                },
            )
            .await;
            return Ok(Requeue::Done);
        }
        return send_report(ctx, state, name, &sha).await;
    }
    // Without a good base there is nothing to plan a proposal under.
    let Some((base_commit, base, _)) = state.head.good.clone() else {
        return Ok(Requeue::Done);
    };
    let limits = base.settings.proposals.clone();
    if state.proposals.planning.len() >= limits.workers {
        return Ok(Requeue::After(std::time::Duration::from_secs(1)));
    }
    // Recorded before the worker starts.
    state.proposals.record.insert(
        name.to_string(),
        Seen {
            commit: sha.clone(),
            planning: true,
            ..Default::default()
        },
    );
    save_record(&ctx.cfg.state_dir, &state.proposals.record);
    state
        .proposals
        .planning
        .insert(name.to_string(), sha.clone());
    info!(r#ref = %name, commit = %&sha[..12], base = %&base_commit[..12], "planning a proposal in a worker");
    let job = super::worker::Job {
        mirror: ctx.mirror.lock().unwrap().path.clone(),
        base_commit,
        name: name.to_string(),
        head: sha.clone(),
        hosts: (!ctx.cfg.hosts.is_empty()).then(|| ctx.cfg.hosts.clone()),
        ssh_key: ctx.cfg.ssh_key.clone(),
        cloud: None,
        cloud_error: None,
        limits,
    };
    let exe = ctx.cfg.worker.clone();
    let done = ctx.proposal_tx.clone();
    let clock = ctx.clock.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let result = clock
            .io(async move {
                let mut job = job;
                // The clouds as the daemon sees them: the worker has no
                // credential to look for itself.
                let clouds = crate::cloud::Clouds::from_env(&base);
                if !clouds.is_empty() {
                    match crate::cloud::observe(&clouds).await {
                        Ok(o) => job.cloud = Some((&o).into()),
                        Err(e) => job.cloud_error = Some(e.to_string()),
                    }
                }
                super::worker::plan(&exe, &job).await
            })
            .await;
        let _ = done.send(ProposalDone { name, sha, result });
    });
    Ok(Requeue::Done)
}

/// A proposal's verdict is in: note it on its commit, record it, show
/// it on the dashboard, raise or resolve its alerts, and report it.
pub(super) async fn proposal_planned(ctx: &Ctx, state: &mut State, done: ProposalDone) {
    let ProposalDone { name, sha, result } = done;
    state.proposals.planning.remove(&name);
    let Some((_, base, _)) = state.head.good.clone() else {
        return;
    };
    let planned = match result {
        Ok(p) => p,
        Err(why) => {
            warn!(r#ref = %name, commit = %&sha[..12], why = %why, "proposal not planned");
            super::worker::Planned::not_planned(
                &name,
                &sha,
                &base.name,
                &why,
                base.settings.forge.is_some(),
            )
        }
    };
    info!(r#ref = %name, commit = %&sha[..12], verdict = %planned.verdict.0, "proposal planned");
    // Everything the worker wrote passes the base's redaction again.
    let redact = |t: &str| base.redact(t);
    let shown = shown(&planned, &redact);
    let report = planned.report.map(|mut r| {
        r.comment = redact(&r.comment);
        r.description = redact(&r.description);
        r.more = r.more.iter().map(|m| redact(m)).collect();
        r
    });
    let verdict = (planned.verdict.0.clone(), redact(&planned.verdict.1));
    let c = sha.clone();
    let (subject, author) = ctx
        .blocking(move |m| m.commit_info(&c))
        .await
        .unwrap_or_default();
    {
        let shown = super::history::ProposalPlan {
            commit: sha.clone(),
            at: ctx.clock.stamp(),
            state: verdict.0.clone(),
            description: verdict.1.clone(),
            subject,
            author,
            ..shown
        };
        let mut board = ctx.shared.board.lock().unwrap();
        board.history.proposals.insert(name.clone(), shown);
        board.save();
    }
    proposal_alerts(ctx, &name, &planned.denials, &planned.raised_cost);
    // Plain text, capped: a proposal's plan cannot flood the notes ref.
    let note = crate::report::note_text(&redact(&planned.note));
    let commit = sha.clone();
    if let Err(e) = ctx
        .blocking(move |m| m.push_note(git2::Oid::from_str(&commit).expect("sha"), &note))
        .await
    {
        warn!(error = %e, "could not note the proposal's plan");
    }
    release_by_review(ctx, state, &name, &sha, planned.reviewed.as_ref()).await;
    state.proposals.record.insert(
        name.clone(),
        Seen {
            commit: sha.clone(),
            planning: false,
            report,
            reviewed: planned.reviewed,
        },
    );
    save_record(&ctx.cfg.state_dir, &state.proposals.record);
    if let Err(again) = send_report(ctx, state, &name, &sha).await {
        super::settle(ctx, state, Request::Proposal(name), Err(again));
    }
}

/// What the dashboard shows of a plan, redacted: its text (not the note's
/// markdown), verdicts and cost, or why there is none.
fn shown(
    p: &super::worker::Planned,
    redact: &dyn Fn(&str) -> String,
) -> super::history::ProposalPlan {
    let all = |v: &[String]| v.iter().map(|x| redact(x)).collect::<Vec<_>>();
    super::history::ProposalPlan {
        text: super::history::capped_plan(redact(&p.text)),
        denials: all(&p.denials),
        warnings: all(&p.warnings),
        raised_cost: p.raised_cost.clone(),
        cost: p
            .cost
            .iter()
            .map(|r| crate::cloud::plan::CostRow {
                server: redact(&r.server),
                ..r.clone()
            })
            .collect(),
        unplanned: p.unplanned.as_ref().map(|u| super::worker::Unplanned {
            why: redact(&u.why),
            details: super::history::capped_plan(redact(&u.details)),
        }),
        ..Default::default()
    }
}

/// Send the report owed for `name` at `sha`, if any; kept on failure.
async fn send_report(
    ctx: &Ctx,
    state: &mut State,
    name: &str,
    sha: &str,
) -> Result<Requeue, Again> {
    let Some(report) = state
        .proposals
        .record
        .get(name)
        .and_then(|s| s.report.clone())
    else {
        return Ok(Requeue::Done);
    };
    // The forge is always the base's: a proposal cannot redirect reports.
    let Some(settings) = state
        .head
        .good
        .as_ref()
        .and_then(|g| g.1.settings.forge.clone())
    else {
        return Ok(Requeue::Done);
    };
    let pr = crate::forge::pr_number(name);
    let forge = super::forge(ctx, state, &settings);
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
            ctx.shared.clear_stale("forge");
            if let Some(s) = state.proposals.record.get_mut(name) {
                s.report = None;
            }
            save_record(&ctx.cfg.state_dir, &state.proposals.record);
            Ok(Requeue::Done)
        }
        Err(e) => {
            // Kept: sent again once the forge answers; never planned again.
            warn!(error = %e, "could not report the plan to the forge");
            ctx.shared
                .note_stale("forge", format!("forge unreachable: {e}"));
            Err(Again::Forge)
        }
    }
}

/// A proposal denied by policy, or raising the monthly cost above the
/// limit, is an alert until a newer head is allowed (or it is closed).
fn proposal_alerts(ctx: &Ctx, name: &str, denials: &[String], raised: &BTreeMap<String, f64>) {
    use crate::notify::{EventKind, Observation, Seen};
    let n = ctx.shared.notifier.settings();
    if n.sinks.is_empty() {
        return;
    }
    let denied = !denials.is_empty();
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
        details: denials.to_vec(),
        seen: if denied {
            Seen::Problem { after_secs: 0 }
        } else {
            Seen::Fine
        },
    }];
    obs.extend(super::alerts::cost(
        raised,
        &n,
        "plan".into(),
        &format!("proposal {name}"),
    ));
    let changed = ctx
        .shared
        .notifier
        .observe(&format!("proposal/{name}"), ctx.clock.now(), obs);
    super::alert_events(ctx, &changed);
}

/// The tree of `commit`, from the mirror.
pub(super) async fn tree_of(ctx: &Ctx, commit: &str) -> Option<String> {
    let c = commit.to_string();
    ctx.blocking(move |m| m.tree_of(&c)).await
}

/// The proposal whose reviewed plan is of `tree`.
pub(super) fn reviewed_in(state: &State, tree: &str) -> Option<(String, Reviewed)> {
    state.proposals.record.iter().find_map(|(name, s)| {
        s.reviewed
            .as_ref()
            .filter(|r| r.tree == tree)
            .map(|r| (name.clone(), r.clone()))
    })
}

/// While a commit is held, the proposals planned with its tree are asked
/// about on each look: an approval may come after the plan.
async fn approved_held(ctx: &Ctx, state: &mut State) {
    let Some(tree) = ctx
        .shared
        .status
        .lock()
        .unwrap()
        .held
        .clone()
        .map(|h| h.tree)
    else {
        return;
    };
    let planned: Vec<(String, Seen)> = state
        .proposals
        .record
        .iter()
        .filter(|(_, s)| s.reviewed.as_ref().is_some_and(|r| r.tree == tree))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    for (name, seen) in planned {
        release_by_review(ctx, state, &name, &seen.commit, seen.reviewed.as_ref()).await;
    }
}

/// A proposal planned with the tree of the commit held for want of a
/// reviewed plan, and approved on the forge at that head by someone other
/// than tidekeeper: the held commit is judged again, against this plan.
/// A plan alone is no approval (anyone who can push can open a proposal).
async fn release_by_review(
    ctx: &Ctx,
    state: &mut State,
    name: &str,
    sha: &str,
    reviewed: Option<&Reviewed>,
) {
    let Some(r) = reviewed else { return };
    let held = ctx.shared.status.lock().unwrap().held.clone();
    // Held for want of a reviewed plan (one that differs needs a human).
    let Some(h) = held.filter(|h| {
        h.tree == r.tree
            && h.reason.starts_with("held: no reviewed plan")
            && state.head.last_seen.as_deref() == Some(h.commit.as_str())
    }) else {
        return;
    };
    let (Some(pr), Some(settings)) = (
        crate::forge::pr_number(name),
        state
            .head
            .good
            .as_ref()
            .and_then(|g| g.1.settings.forge.clone()),
    ) else {
        return;
    };
    let approved = match super::forge(ctx, state, &settings) {
        Ok(forge) => forge.approved_by(pr, sha).await,
        Err(e) => Err(e),
    };
    match approved {
        Ok(Some(by)) => {
            info!(commit = %&h.commit[..12], r#ref = %name, %by, "the held commit's tree is approved on a proposal; judging it again");
            state.head.approved = Some((h.commit.clone(), by));
            state.head.incomplete = Some(h.commit);
            ctx.sched.now(Request::Head);
        }
        Ok(None) => {
            info!(commit = %&h.commit[..12], r#ref = %name, "a proposal has the held commit's tree, not approved at its head");
        }
        Err(e) => warn!(error = %e, "could not ask the forge whether the proposal is approved"),
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
                planning: false,
                report: Some(Report {
                    state: "success".into(),
                    description: "d".into(),
                    comment: "c".into(),
                    more: vec!["part 2".into()],
                    context: "x".into(),
                    marker: "m".into(),
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
