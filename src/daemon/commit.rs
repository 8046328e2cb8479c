//! A new commit on the followed branch: load it, plan it, judge it (policies,
//! the reviewed plan), apply it — at once, or as a rollout — on the hosts that
//! are free, and report what happened; or hold it (invalid, denied, suspended,
//! not the reviewed plan) and say why. The steps are named: plan, gate,
//! apply, record; then the verdict (a pure function of the hosts' and
//! servers' outcomes: applied, partial, quarantined), the note, the forge
//! and the status push.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, info, info_span, warn};

use super::scheduler::Again;
use super::status::{self, HostState, HostStatus, Invalid, Quarantine};
use super::windows::windows_gate;
use super::{Ctx, Policies, State, now, proposals, trail};
use crate::audit;
use crate::engine::{self, HostError, HostOutcome, HostResult};
use crate::model::desired::Fleet;
use crate::reconcile;

impl Ctx {
    /// Plan (and apply, unless the policies deny the plan) the servers and
    /// hosts; update host statuses. `Err` carries the policies' denials and
    /// the cloud plan's refusals (a destroy without permission).
    pub(super) async fn reconcile(
        &self,
        commit: &str,
        fleet: Arc<Fleet>,
        policies: &Policies,
        mode: Mode<'_>,
    ) -> Result<Applied, Refused> {
        let started = Instant::now();
        let planned = self.plan(commit, &fleet, mode).await;
        self.record_cost(&planned.plan);
        let review = match gate(&planned.plan, &fleet, policies, mode) {
            Ok(review) => review,
            Err(refused) => {
                self.clock
                    .io(reconcile::finish(planned.plan, planned.pool))
                    .await;
                return Err(refused);
            }
        };
        let cloud_errors: Vec<String> = planned
            .plan
            .cloud
            .as_ref()
            .map(|c| c.errors.clone())
            .unwrap_or_default();
        let hosts: Vec<String> = planned.plan.hosts.iter().map(|p| p.host.clone()).collect();
        let new_servers = planned.plan.new_servers.clone();
        let stages = fleet
            .rollout_stages(&hosts)
            .filter(|s| mode.apply && (s.len() > 1 || !new_servers.is_empty()));
        let Planned {
            plan,
            pool,
            opts,
            clouds,
            held,
            busy,
        } = planned;
        if let Some(stages) = stages {
            // The rollout goes on in its own task with these hosts' locks;
            // the loop serves other hosts, jobs and proposals meanwhile.
            self.roll_out(Start {
                commit: commit.to_string(),
                plan,
                pool,
                stages,
                opts,
                clouds,
                held,
                busy,
                cloud_errors,
                review,
            });
            return Ok(Applied::RollingOut);
        }
        let (results, outcomes) = if mode.apply {
            let quiet: engine::Progress = Arc::new(|_| {});
            let done = self
                .clock
                .io(async move { reconcile::apply(plan, &pool, opts, &clouds, quiet).await })
                .await;
            (done.hosts, done.cloud)
        } else {
            (self.clock.io(reconcile::finish(plan, pool)).await, vec![])
        };
        let done = self.record(
            commit,
            &fleet,
            Done {
                results,
                outcomes,
                busy,
                cloud_errors,
                new_servers,
                apply: mode.apply,
                review,
            },
        );
        drop(held);
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconcile done"
        );
        Ok(Applied::Done(done))
    }

    /// Plan the servers and the hosts free now; those a job (or another
    /// reconcile) holds wait for the next pass, and their status says for what.
    async fn plan(&self, commit: &str, fleet: &Arc<Fleet>, mode: Mode<'_>) -> Planned {
        let opts = Arc::new(self.options(fleet, mode.changed_files_only));
        let who = if mode.apply {
            format!("commit {}", &commit[..commit.len().min(12)])
        } else {
            "a drift check".to_string()
        };
        let selected: Vec<String> = (self.selected(fleet).into_iter())
            .filter(|h| !mode.outside.iter().any(|(o, _)| o == h))
            .collect();
        let (held, mut busy) = self.locks.try_take(&selected, &who);
        busy.extend(mode.outside.iter().cloned());
        let names = held.hosts();
        let clouds = Arc::new(crate::cloud::Clouds::from_env(fleet));
        let whole = self.cfg.hosts.is_empty() && busy.is_empty();
        // This reconcile's connections, from its plan to its apply.
        let pool = engine::Pool::new();
        let plan = self
            .clock
            .io({
                let (fleet, opts, clouds, pool) =
                    (fleet.clone(), opts.clone(), clouds.clone(), pool.clone());
                let quiet: engine::Progress = Arc::new(|_| {});
                async move {
                    reconcile::plan(
                        fleet,
                        names,
                        whole,
                        opts,
                        &clouds,
                        Default::default(),
                        quiet,
                        &pool,
                    )
                    .await
                }
            })
            .await;
        Planned {
            plan,
            pool,
            opts,
            clouds,
            held,
            busy,
        }
    }

    /// The cloud plan's monthly cost, in the status and the dashboard's history.
    fn record_cost(&self, plan: &reconcile::FleetPlan) {
        let Some(c) = &plan.cloud else { return };
        let cost: BTreeMap<String, f64> = c
            .cost
            .iter()
            .map(|(k, v)| (k.to_string(), (v.proposed * 100.0).round() / 100.0))
            .collect();
        let mut board = self.shared.board.lock().unwrap();
        board.history.cost_on(&now()[..10], &cost);
        for (host, (provider, m)) in &c.server_cost {
            board.history.hosts.entry(host.clone()).or_default().cost = Some((
                crate::cloud::plan::provider_name(*provider).to_string(),
                m.amount,
                m.currency.to_string(),
            ));
        }
        self.shared.status.lock().unwrap().monthly_cost = cost;
    }

    /// Host statuses and metrics from what a reconcile (or a rollout) did.
    pub(super) fn record(&self, commit: &str, fleet: &Fleet, d: Done) -> Reconciled {
        let (results, busy, new_servers, apply) = (d.results, d.busy, d.new_servers, d.apply);
        let outcomes = d.outcomes;
        let review_note = d.review;
        let mut cloud_failures = d.cloud_errors;
        for o in &outcomes {
            match &o.error {
                Some(e) => {
                    warn!(host = %o.host, action = o.action.word(), error = %e, "server change failed");
                    cloud_failures.push(format!("{} {}: {e}", o.host, o.what));
                }
                None => {
                    info!(host = %o.host, action = o.action.word(), seconds = o.seconds, "server changed")
                }
            }
        }
        let mut out = Vec::new();
        let mut st = self.shared.status.lock().unwrap();
        let mut metrics = self.shared.metrics.lock().unwrap();
        for r in &results {
            if let Some(line) = &r.learned_host_key
                && !st.learned_host_keys.contains(line)
            {
                warn!(host = %r.host, key = %line, "host key accepted on first use; recorded on the status branch");
                st.learned_host_keys.push(line.clone());
            }
            if let Some(line) = &r.generated_host_key {
                st.generated_host_keys.insert(r.host.clone(), line.clone());
            }
            let prev = st
                .hosts
                .get(&r.host)
                .cloned()
                .unwrap_or_else(|| HostStatus::new(&r.host));
            let mut h = host_status(prev, r, commit, apply);
            if !apply && new_servers.contains(&r.host) {
                h.state = HostState::Pending;
                h.drift.clear();
                h.last_result = Some("its server is to be created".into());
            }
            info!(host = %r.host, state = h.state.word(), result = h.last_result.as_deref().unwrap_or(""), "host reconciled");
            let result = h.state.word().to_string();
            *metrics
                .reconciles
                .entry((r.host.clone(), result))
                .or_default() += 1;
            if let Some(k) = r.error_kind {
                *metrics.host_errors.entry(k.metric_label()).or_default() += 1;
            }
            metrics
                .durations
                .entry(r.host.clone())
                .or_default()
                .observe(r.elapsed.as_secs_f64());
            st.hosts.insert(r.host.clone(), h.clone());
            out.push(h);
        }
        for (host, holder) in busy {
            let mut h = st
                .hosts
                .get(&host)
                .cloned()
                .unwrap_or_else(|| HostStatus::new(&host));
            if apply {
                h.state = HostState::Pending;
                h.error_kind = Some(HostError::Locked);
                h.last_error = Some(format!("busy: {holder} runs on this host"));
                h.last_result = Some(format!("waiting for {holder}"));
                super::windows::left_out(&mut h, &holder);
            }
            info!(host = %host, %holder, "host busy; left for the next pass");
            st.hosts.insert(host.clone(), h.clone());
            out.push(h);
        }
        // Hosts that left the config leave the status too.
        st.hosts.retain(|name, _| {
            fleet.host(name).is_some()
                && (self.cfg.hosts.is_empty() || self.cfg.hosts.contains(name))
        });
        st.generated_host_keys
            .retain(|name, _| fleet.host(name).is_some());
        st.last_reconcile = Some(now());
        drop(st);
        drop(metrics);
        self.remember(commit, fleet, &results, apply);
        Reconciled {
            hosts: out,
            cloud_failures,
            review: review_note,
        }
    }

    /// The run in the dashboard's history: its figures, each host's entry
    /// and last plan with changes (redacted as notes are).
    fn remember(&self, commit: &str, fleet: &Fleet, results: &[HostResult], apply: bool) {
        use super::history::{HostEntry, HostRun, Run};
        let at = now();
        let applied =
            |r: &HostResult| r.error.is_none() && r.plan.as_ref().is_some_and(|p| p.has_changes());
        let counted: Vec<&HostResult> = results.iter().filter(|r| applied(r)).collect();
        // An apply counts what the hosts reported done, failed ones too.
        let t = if apply {
            engine::render::done_totals(results)
        } else {
            engine::render::totals(&counted)
        };
        let changed = t.add + t.change + t.destroy + t.run;
        let run = Run {
            at: at.clone(),
            commit: commit.to_string(),
            apply,
            seconds: results
                .iter()
                .map(|r| r.elapsed.as_secs_f64())
                .fold(0.0, f64::max),
            changes: if apply { changed } else { 0 },
            drift: if apply { 0 } else { changed },
            failed: results.iter().filter(|r| r.error.is_some()).count(),
            hosts: results.len(),
        };
        let st = self.shared.status.lock().unwrap();
        let hosts = results
            .iter()
            .map(|r| {
                let h = st.hosts.get(&r.host);
                let entry = HostEntry {
                    run: HostRun {
                        at: at.clone(),
                        commit: commit.to_string(),
                        apply,
                        state: h.map(|h| h.state).unwrap_or(HostState::Pending),
                        result: h.and_then(|h| h.last_result.clone()).unwrap_or_default(),
                        ms: r.elapsed.as_millis() as u64,
                    },
                    plan: r
                        .plan
                        .as_ref()
                        .filter(|p| p.has_changes())
                        .map(|p| fleet.redact(&engine::render::host_plan(p, false))),
                    cost: None,
                };
                (r.host.clone(), entry)
            })
            .collect();
        drop(st);
        let mut board = self.shared.board.lock().unwrap();
        board.history.record(run, hosts);
        board.history.keep_hosts(|h| fleet.host(h).is_some());
        board.web = fleet.settings.forge.as_ref().map(crate::forge::web_url);
        board.save();
    }

    /// Whether applies and jobs are stopped, and by whom: `suspend: true` in
    /// the commit's config, or an operator (POST /suspend). Recorded in the status.
    pub(super) fn suspension(&self, commit: &str, fleet: &Fleet) -> Option<status::Suspension> {
        let mut st = self.shared.status.lock().unwrap();
        if fleet.settings.suspend {
            let s = st
                .suspended
                .clone()
                .filter(|s| s.source == "config")
                .unwrap_or_else(|| status::Suspension {
                    source: "config".into(),
                    by: format!("tidekeeper.yaml at {}", &commit[..commit.len().min(12)]),
                    reason: "suspend: true".into(),
                    at: now(),
                });
            st.suspended = Some(s);
        } else if st.suspended.as_ref().is_some_and(|s| s.source == "config") {
            st.suspended = None;
        }
        st.suspended.clone()
    }

    /// The note on the commit: the hosts, how the plan compares with the
    /// reviewed one, and the rollout it was part of.
    fn apply_note(
        &self,
        commit: &str,
        summary: &str,
        done: &Reconciled,
        started: Instant,
        approval: Option<&(String, super::requirements::Approval)>,
    ) -> String {
        let mut note = status::note(
            commit,
            summary,
            &done.hosts,
            started.elapsed().as_secs_f64(),
        );
        if let Some(r) = &done.review {
            note.push_str(&format!("\nreview: {r}\n"));
        }
        if let Some(a) = approval.filter(|(c, _)| c == commit) {
            note.push_str(&format!("\napproval: {}\n", a.1.line()));
        }
        let rollout = self.shared.status.lock().unwrap().rollout.clone();
        if let Some(r) = rollout.filter(|r| commit.starts_with(&r.commit)) {
            note.push_str(&format!(
                "\nrollout: {} stage(s); {} at stage {} ({})\n",
                r.stages,
                r.state,
                r.stage,
                r.hosts.join(", ")
            ));
        }
        note
    }
}

/// A commit held by `apply.require_reviewed_plan` (no reviewed plan of
/// its tree, or the plan is no longer the reviewed one): nothing applied,
/// nothing quarantined. The status, the note and the forge say why; a
/// proposal planned with its tree or `tidekeeper release` lets it through.
pub(super) async fn hold_unreviewed(
    ctx: &Ctx,
    state: &mut State,
    commit: String,
    fleet: &Fleet,
    why: String,
) {
    warn!("{why}; held, nothing applied");
    let tree = proposals::tree_of(ctx, &commit).await.unwrap_or_default();
    state.head.incomplete = None;
    let reason = format!("held: {}", why.lines().next().unwrap_or(""));
    ctx.shared.status.lock().unwrap().held = Some(status::Held {
        commit: commit.clone(),
        tree,
        reason: reason.clone(),
        at: now(),
        until: None,
        windows: false,
    });
    let through = if why.starts_with(super::requirements::HELD) {
        "It is judged again on every poll: it goes through once its pull request meets them"
    } else {
        "A proposal planned with this tree lets it through"
    };
    let note = format!(
        "tidekeeper: held {commit}; nothing applied\n\n{why}\n\n{through}; `tidekeeper release {} --by NAME` (or, for a plan that differs from the reviewed one, `tidekeeper retry`) applies it as it plans now.\n",
        &commit[..12]
    );
    let description = if why.starts_with(UNREVIEWED) {
        "held: no reviewed plan of this tree"
    } else if why.starts_with(super::requirements::HELD) {
        "held: apply requirements not met"
    } else {
        "held: the plan differs from the reviewed one"
    };
    super::pending_on_forge(ctx, state, fleet, &commit, description).await;
    let note = trail::noted(
        ctx,
        state,
        &commit,
        audit::Verdict::Held,
        &reason,
        note,
        super::windows::audit_line(state, &commit),
    )
    .await;
    ctx.push_status(Some((commit, note))).await;
}

/// The reviewed plan `commit` is compared with, and an operator's release
/// of it. `None`: held, for `apply.require_reviewed_plan` is on and there
/// is neither a reviewed plan of its tree nor a release — a direct push, a
/// merge of a head planned before the branch moved on, a squash or rebase
/// merge whose tree no proposal had — or for `apply.apply_requirements` its
/// pull request does not meet (see [`super::requirements`]).
async fn review_of(
    ctx: &Ctx,
    state: &mut State,
    commit: &str,
    fleet: &Fleet,
    retry: bool,
) -> Option<(Option<Review>, Option<status::Release>)> {
    let tree = proposals::tree_of(ctx, commit).await.unwrap_or_default();
    let release = ctx
        .shared
        .release
        .lock()
        .unwrap()
        .take_if(|r| r.commit == commit);
    if let Some(r) = &release {
        info!(by = %r.by, "released by an operator");
        state.head.released = Some(commit.to_string());
        let mut board = ctx.shared.board.lock().unwrap();
        board.history.released(r.clone());
        board.save();
    }
    let released = state.head.released.as_deref() == Some(commit);
    // The first commit a fleet ever has applied is its start, not a change
    // to review; from then on the last applied commit's setting counts too,
    // so a commit turning it off is itself held.
    let first = ctx.shared.status.lock().unwrap().applied_commit.is_none();
    let required = (fleet.settings.require_reviewed_plan && !first) || state.head.reviewed_only;
    let review = proposals::reviewed_in(state, &tree).map(|(proposal, reviewed)| Review {
        proposal,
        reviewed,
        accept: retry || released,
        required,
        stale: None,
    });
    // A merge of a head reviewed before the branch moved on: held all the
    // same, but planned first, so its note names what the plan changes
    // beyond the reviewed one (a template whose inputs moved).
    let stale = match review {
        None => stale_merge(ctx, state, commit).await,
        Some(_) => None,
    };
    if required && review.is_none() && !released && stale.is_none() {
        let why = format!(
            "{UNREVIEWED} ({}): no proposal was planned with it (a direct push, a merge of a head planned before the branch moved on, or a squash or rebase merge of one)",
            &tree[..tree.len().min(12)]
        );
        hold_unreviewed(ctx, state, commit.to_string(), fleet, why).await;
        return None;
    }
    let review = review.or(stale
        .filter(|_| required && !released)
        .map(|(proposal, reviewed)| Review {
            proposal,
            reviewed,
            accept: false,
            required,
            stale: Some(tree.clone()),
        }));
    state.head.approval = match super::requirements::check(ctx, state, commit, fleet).await {
        Ok(a) => a.map(|a| (commit.to_string(), a)),
        // An operator's release is the break-glass: recorded, applied.
        Err(why) if released || retry => {
            warn!("{why}; applied anyway: released by an operator");
            None
        }
        Err(why) => {
            hold_unreviewed(ctx, state, commit.to_string(), fleet, why).await;
            return None;
        }
    };
    ctx.shared
        .status
        .lock()
        .unwrap()
        .held
        .take_if(|h| h.commit == commit);
    Some((review, release))
}

/// Why a commit without a reviewed plan of its tree is held (the start of
/// the reason, which an approved proposal of that tree releases).
const UNREVIEWED: &str = "no reviewed plan of this tree";

/// The reviewed proposal `commit` merges (one of its parents is a planned
/// head) when the merge's tree is not that head's: the branch moved on.
async fn stale_merge(
    ctx: &Ctx,
    state: &State,
    commit: &str,
) -> Option<(String, proposals::Reviewed)> {
    let c = commit.to_string();
    let parents = ctx.blocking(move |m| m.parents_of(&c)).await;
    state.proposals.record.iter().find_map(|(name, seen)| {
        let r = seen.reviewed.as_ref()?;
        parents
            .contains(&seen.commit)
            .then(|| (name.clone(), r.clone()))
    })
}

/// A commit that is not applied (invalid config, or denied by the
/// policies): reported in the status and in a note on the commit.
pub(super) async fn reject(
    ctx: &Ctx,
    state: &State,
    commit: String,
    why: &str,
    errors: Vec<String>,
) {
    warn!(errors = errors.len(), "{why} this commit; nothing applied");
    let note = format!(
        "tidekeeper: {why} {commit}; nothing applied\n\n{}\n",
        errors.join("\n")
    );
    ctx.shared.status.lock().unwrap().invalid = Some(Invalid {
        commit: commit.clone(),
        errors,
        denied: why.contains("policies"),
    });
    let summary = format!("{why} this commit; nothing applied");
    let note = trail::noted(
        ctx,
        state,
        &commit,
        audit::Verdict::Rejected,
        &summary,
        note,
        super::windows::audit_line(state, &commit),
    )
    .await;
    ctx.push_status(Some((commit, note))).await;
}

/// A new commit on the branch (`retry`: even if it is quarantined or held,
/// accepting its plan as it is now). `Err` when hosts were not reached.
pub(super) async fn on_commit(
    ctx: &Ctx,
    state: &mut State,
    commit: String,
    retry: bool,
) -> Result<(), Again> {
    let span = info_span!("commit", commit = %&commit[..12]);
    async {
        {
            let st = ctx.shared.status.lock().unwrap();
            let released = ctx.release_asked(&commit);
            if !retry && !released && st.quarantined.as_ref().is_some_and(|q| q.commit == commit) {
                info!("commit is quarantined; waiting for a newer commit or `tidekeeper retry`");
                return Ok(());
            }
        }
        let (fleet, policies) = match ctx.load(&commit).await {
            Err(errors) => {
                reject(ctx, state, commit, "invalid config at", errors).await;
                return Ok(());
            }
            Ok((mut f, policies)) => {
                ctx.pin_learned_keys(&mut f);
                ctx.adopt_status_refs(&f).await;
                (Arc::new(f), policies)
            }
        };
        let already =
            ctx.shared.status.lock().unwrap().applied_commit.as_deref() == Some(commit.as_str());
        {
            let mut st = ctx.shared.status.lock().unwrap();
            st.invalid = None;
            st.fleet = fleet.name.clone();
            // A newer commit is judged on its own.
            st.held.take_if(|h| h.commit != commit);
        }
        state.head.good = Some((commit.clone(), fleet.clone(), policies.clone()));
        ctx.shared.notifier.configure(&fleet);
        super::jobs::reschedule(ctx, state, ctx.clock.now());
        if already && !retry {
            info!("already applied (per the status branch); not applying again");
            return Ok(());
        }
        if let Some(s) = ctx.suspension(&commit, &fleet) {
            hold(ctx, state, commit, fleet, &policies, s).await;
            return Ok(());
        }
        let started = Instant::now();
        let Some((review, release)) = review_of(ctx, state, &commit, &fleet, retry).await else {
            return Ok(());
        };
        let Some(outside) = windows_gate(ctx, state, &commit, &fleet, release.as_ref()).await
        else {
            return Ok(());
        };
        info!("applying");
        let done = match ctx
            .reconcile(
                &commit,
                fleet.clone(),
                &policies,
                Mode {
                    apply: true,
                    review: review.as_ref(),
                    release: release.as_ref(),
                    outside: &outside,
                    ..Mode::default()
                },
            )
            .await
        {
            Ok(Applied::Done(r)) => r,
            Ok(Applied::RollingOut) => {
                state
                    .rolling
                    .insert(commit.clone(), (fleet.clone(), started));
                state.head.incomplete = None;
                ctx.push_status(None).await;
                return Ok(());
            }
            Err(Refused::Denied(denied)) => {
                reject(ctx, state, commit, "the policies deny", denied).await;
                return Ok(());
            }
            Err(Refused::Held(why)) => {
                held_after_planning(ctx, state, commit, &fleet, why).await;
                return Ok(());
            }
        };
        report(ctx, state, commit, &fleet, done, started).await
    }
    .instrument(span)
    .await
}

/// Held once its plan was compared with the reviewed one. A plan that
/// changed since review needs a human: quarantined too. A stale merge waits
/// for a review of its own tree.
async fn held_after_planning(
    ctx: &Ctx,
    state: &mut State,
    commit: String,
    fleet: &Fleet,
    why: String,
) {
    if !why.starts_with(UNREVIEWED) {
        let reason = format!("held: {}", why.lines().next().unwrap_or(""));
        let again = {
            let mut st = ctx.shared.status.lock().unwrap();
            let again = st.quarantined.as_ref().is_some_and(|q| q.commit == commit);
            st.quarantined = Some(Quarantine {
                commit: commit.clone(),
                reason: reason.clone(),
            });
            again
        };
        if !again {
            quarantined_event(ctx, &commit, &reason);
        }
    }
    hold_unreviewed(ctx, state, commit, fleet, why).await;
}

/// What a commit did, in the status, the note on the commit and the forge.
/// `Err` when some hosts were not reached (they get it on a later pass).
pub(super) async fn report(
    ctx: &Ctx,
    state: &mut State,
    commit: String,
    fleet: &Fleet,
    done: Reconciled,
    started: Instant,
) -> Result<(), Again> {
    let verdict = verdict(&done.hosts, &done.cloud_failures);
    if !matches!(verdict, Verdict::Quarantined { .. }) {
        state.head.reviewed_only = fleet.settings.require_reviewed_plan;
    }
    let summary = record_verdict(ctx, state, &commit, &verdict, done.hosts.len());
    let note = ctx.apply_note(
        &commit,
        &summary,
        &done,
        started,
        state.head.approval.as_ref(),
    );
    let note = trail::noted(
        ctx,
        state,
        &commit,
        verdict.audit(),
        &summary,
        note,
        super::windows::audit_line(state, &commit),
    )
    .await;
    if let Some(settings) = fleet.settings.forge.clone() {
        let outcome = if matches!(verdict, Verdict::Quarantined { .. }) {
            "failure"
        } else {
            "success"
        };
        let forge = super::forge(ctx, state, &settings);
        report_to_forge(ctx, forge, &fleet.name, &commit, outcome, &summary, &note).await;
    }
    ctx.push_status(Some((commit, note))).await;
    match verdict {
        Verdict::Partial { unreachable, busy } => Err(Again::Hosts { unreachable, busy }),
        _ => Ok(()),
    }
}

/// The verdict in the status (applied, or quarantined) and in what the
/// next pass does; its one-line summary.
fn record_verdict(
    ctx: &Ctx,
    state: &mut State,
    commit: &str,
    verdict: &Verdict,
    hosts: usize,
) -> String {
    // A rollout that ends after a newer commit came leaves that one's state alone.
    if state.head.last_seen.as_deref() == Some(commit) {
        state.head.incomplete =
            matches!(verdict, Verdict::Partial { .. }).then(|| commit.to_string());
    }
    let mut st = ctx.shared.status.lock().unwrap();
    match verdict {
        Verdict::Applied => {
            st.applied_commit = Some(commit.to_string());
            ctx.shared.metrics.lock().unwrap().last_applied_unix =
                Some(ctx.clock.now().timestamp());
            st.quarantined = None;
            st.held = None;
        }
        Verdict::Partial { unreachable, busy } => {
            info!(
                waiting = busy,
                unreachable, "commit applied in part; the rest on a later pass"
            );
        }
        Verdict::Quarantined { reason, .. } => {
            warn!(%reason, "commit quarantined");
            let again = st.quarantined.as_ref().is_some_and(|q| q.commit == commit);
            let reason = format!("apply failed: {reason}");
            st.quarantined = Some(Quarantine {
                commit: commit.to_string(),
                reason: reason.clone(),
            });
            drop(st);
            if !again {
                quarantined_event(ctx, commit, &reason);
            }
        }
    }
    verdict.summary(hosts)
}

/// A commit newly quarantined, in the dashboard's events.
fn quarantined_event(ctx: &Ctx, commit: &str, reason: &str) {
    let mut board = ctx.shared.board.lock().unwrap();
    let text = format!("commit {}: {reason}", &commit[..commit.len().min(12)]);
    board.history.event(&ctx.clock.stamp(), "quarantined", text);
    board.save();
}

/// The apply on main, reported on its commit; a forge outage never blocks.
async fn report_to_forge(
    ctx: &Ctx,
    forge: Result<Arc<crate::forge::Forge>, crate::forge::ForgeError>,
    fleet: &str,
    commit: &str,
    outcome: &str,
    summary: &str,
    note: &str,
) {
    let text = format!("```\n{note}```\n");
    let sent = async move {
        let forge = forge?;
        if forge
            .status(
                commit,
                &format!("tidekeeper/{fleet}/apply"),
                outcome,
                summary,
            )
            .await?
        {
            forge.commit_comment(commit, &text).await?;
        }
        Ok::<(), crate::forge::ForgeError>(())
    }
    .await;
    if let Err(e) = sent {
        warn!(error = %e, "could not report the apply to the forge");
        ctx.shared
            .note_stale("forge", format!("forge unreachable: {e}"));
    }
}

/// A suspended fleet: the commit is planned and reported, nothing applied;
/// it is applied on the first pass after resuming.
pub(super) async fn hold(
    ctx: &Ctx,
    state: &mut State,
    commit: String,
    fleet: Arc<Fleet>,
    policies: &Policies,
    s: status::Suspension,
) {
    info!(by = %s.by, reason = %s.reason, "suspended: planning only");
    state.head.incomplete = Some(commit.clone());
    let hosts = match ctx.reconcile(&commit, fleet, policies, Mode::plan()).await {
        Ok(Applied::Done(r)) => r.hosts,
        _ => vec![], // planning only: never a rollout
    };
    let summary = format!(
        "suspended by {} ({}): planned, nothing applied",
        s.by, s.reason
    );
    let note = status::note(&commit, &summary, &hosts, 0.0);
    let note = trail::noted(
        ctx,
        state,
        &commit,
        audit::Verdict::PlannedOnly,
        &summary,
        note,
        super::windows::audit_line(state, &commit),
    )
    .await;
    ctx.push_status(Some((commit, note))).await;
}

/// A reconcile applied (or planned) and recorded, or a rollout started.
pub(super) enum Applied {
    Done(Reconciled),
    /// Going on in its own task; reported when it ends.
    RollingOut,
}

/// A rollout about to start: the plan, its stages, and the locks it keeps.
pub(super) struct Start {
    pub commit: String,
    pub plan: reconcile::FleetPlan,
    /// The plan's connections, applied stage by stage.
    pub pool: engine::Pool,
    pub stages: Vec<crate::model::desired::Stage>,
    pub opts: Arc<engine::Options>,
    pub clouds: Arc<crate::cloud::Clouds>,
    pub held: super::locks::Held,
    pub busy: Vec<(String, String)>,
    pub cloud_errors: Vec<String>,
    pub review: Option<String>,
}

/// What applying did, before it is recorded.
pub(super) struct Done {
    pub results: Vec<HostResult>,
    pub outcomes: Vec<crate::cloud::apply::CloudOutcome>,
    /// Hosts that were held by other work, with who held them.
    pub busy: Vec<(String, String)>,
    /// The cloud plan's own errors.
    pub cloud_errors: Vec<String>,
    pub new_servers: Vec<String>,
    pub apply: bool,
    pub review: Option<String>,
}

/// What a reconcile did to the hosts, and which server changes failed.
pub(super) struct Reconciled {
    pub(super) hosts: Vec<HostStatus>,
    cloud_failures: Vec<String>,
    /// How the plan compares with the one reviewed on the merged proposal.
    review: Option<String>,
}

/// Why a commit was not applied at all.
pub(super) enum Refused {
    /// The policies deny the plan (or a destroy lacks permission).
    Denied(Vec<String>),
    /// `apply.require_reviewed_plan`: the plan is not the one reviewed.
    Held(String),
}

/// The reviewed plan of the proposal a merge commit's tree comes from.
pub(super) struct Review {
    proposal: String,
    reviewed: proposals::Reviewed,
    /// `tidekeeper retry`: apply it as it is now.
    accept: bool,
    /// `apply.require_reviewed_plan`, of this commit or the last applied.
    required: bool,
    /// A merge of the reviewed head after the branch moved on: its tree
    /// (not the head's); held whatever its plan, which the note compares.
    stale: Option<String>,
}

/// How a reconcile runs: applying or only planning, hashing every managed
/// file or only those whose stat moved, and against which reviewed plan.
#[derive(Clone, Copy, Default)]
pub(super) struct Mode<'a> {
    pub apply: bool,
    /// A drift check between full checks.
    pub changed_files_only: bool,
    /// A merge of a reviewed proposal.
    pub review: Option<&'a Review>,
    /// An operator's release of a held commit (`tidekeeper release`).
    pub release: Option<&'a status::Release>,
    /// Hosts whose apply window is shut, with why: left out like busy ones.
    pub outside: &'a [(String, String)],
}

impl Mode<'_> {
    /// Plan only: a drift check that reports, a suspended fleet.
    pub(super) fn plan() -> Self {
        Mode::default()
    }
}

/// A reconcile's plan, with what applying it needs.
struct Planned {
    plan: reconcile::FleetPlan,
    pool: engine::Pool,
    opts: Arc<engine::Options>,
    clouds: Arc<crate::cloud::Clouds>,
    held: super::locks::Held,
    busy: Vec<(String, String)>,
}

/// May the plan be applied? The policies judge a plan with changes; a merge
/// of a reviewed proposal is compared with the reviewed plan. `Ok` carries
/// what the note says of the review.
fn gate(
    plan: &reconcile::FleetPlan,
    fleet: &Fleet,
    policies: &Policies,
    mode: Mode<'_>,
) -> Result<Option<String>, Refused> {
    if !mode.apply {
        return Ok(None);
    }
    if plan.has_changes() {
        let gate = plan.gate(policies);
        if gate.stops() {
            return Err(Refused::Denied(
                gate.reasons().iter().map(|w| fleet.redact(w)).collect(),
            ));
        }
    }
    let released = mode.release.map(super::windows::released_note);
    let Some(r) = mode.review else {
        return Ok(released.map(|r| format!("{r} (no reviewed plan of this tree)")));
    };
    let (digest, lines) = reconcile::plan_digest(plan.cloud.as_ref(), &plan.results());
    if let Some(tree) = &r.stale {
        let what = compare_review(r, &digest, &lines).unwrap_or_else(|| {
            format!(
                "its plan is the one reviewed on {} (digest {digest})",
                r.proposal
            )
        });
        return Err(Refused::Held(fleet.redact(&format!(
            "{UNREVIEWED} ({}): it merges {}, planned before the branch moved on; {what}",
            &tree[..tree.len().min(12)],
            r.proposal
        ))));
    }
    match compare_review(r, &digest, &lines) {
        None => Ok(Some(format!(
            "the plan is the one reviewed on {} (digest {digest})",
            r.proposal
        ))),
        Some(text) => {
            let text = fleet.redact(&text);
            if r.required && !r.accept {
                return Err(Refused::Held(text));
            }
            Ok(Some(format!(
                "{text}\n(applied: apply.require_reviewed_plan is {})",
                match (released, r.accept) {
                    (Some(by), _) => format!("overridden: {by}"),
                    (None, true) => "overridden by retry".into(),
                    (None, false) => "off".into(),
                }
            )))
        }
    }
}

/// How the plan (`digest`, `lines`) differs from the reviewed one; `None`
/// when it is the same.
fn compare_review(r: &Review, digest: &str, lines: &[String]) -> Option<String> {
    let seen = &r.reviewed;
    if digest == seen.digest {
        return None;
    }
    let mut diff: Vec<String> = lines
        .iter()
        .filter(|l| !seen.lines.contains(l))
        .map(|l| format!("  now also:     {l}"))
        .collect();
    diff.extend(
        seen.lines
            .iter()
            .filter(|l| !lines.contains(l))
            .map(|l| format!("  reviewed, no longer: {l}")),
    );
    Some(format!(
        "the plan differs from the one reviewed on {} (reviewed {}, now {digest}; a host drifted or changed since review):\n{}",
        r.proposal,
        seen.digest,
        diff.join("\n")
    ))
}

/// What applying a commit comes to, from the hosts' and the servers' outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Every host got it: the commit is the applied one.
    Applied,
    /// Nothing failed, but some hosts were unreachable or busy: they get
    /// it on a later pass, with backoff.
    Partial { unreachable: usize, busy: usize },
    /// A failure that needs a human: the commit is held until a newer one
    /// or `tidekeeper retry`.
    Quarantined {
        reason: String,
        /// Server changes that failed (0: hosts failed).
        servers: usize,
        /// Hosts whose apply failed.
        hosts: usize,
    },
}

/// The verdict on a commit's apply. Hosts that could not be reached fail
/// nothing (the commit is applied to them on a later pass); any other host
/// failure, or a failed server change, quarantines the commit.
pub(super) fn verdict(hosts: &[HostStatus], cloud_failures: &[String]) -> Verdict {
    let failed: Vec<&HostStatus> = hosts
        .iter()
        .filter(|h| {
            matches!(h.state, HostState::Failed | HostState::Unreachable)
                && h.error_kind != Some(HostError::Unreachable)
        })
        .collect();
    let unreachable = hosts
        .iter()
        .filter(|h| h.error_kind == Some(HostError::Unreachable))
        .count();
    let busy = hosts
        .iter()
        .filter(|h| h.error_kind.is_some_and(HostError::is_transient))
        .count();
    if !cloud_failures.is_empty() {
        Verdict::Quarantined {
            reason: cloud_failures.join("; "),
            servers: cloud_failures.len(),
            hosts: failed.len(),
        }
    } else if !failed.is_empty() {
        let reason = failed
            .iter()
            .map(|h| {
                format!(
                    "{}: {}",
                    h.host,
                    h.last_error.as_deref().unwrap_or("failed")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Verdict::Quarantined {
            reason,
            servers: 0,
            hosts: failed.len(),
        }
    } else if unreachable + busy > 0 {
        Verdict::Partial { unreachable, busy }
    } else {
        Verdict::Applied
    }
}

impl Verdict {
    /// The verdict as the note's audit trail names it.
    fn audit(&self) -> audit::Verdict {
        match self {
            Verdict::Applied => audit::Verdict::Applied,
            Verdict::Partial { .. } => audit::Verdict::AppliedInPart,
            Verdict::Quarantined { .. } => audit::Verdict::Quarantined,
        }
    }

    /// One line for the note and the forge's status, of `total` hosts.
    pub(super) fn summary(&self, total: usize) -> String {
        match self {
            Verdict::Applied => format!("applied to {total} host(s)"),
            Verdict::Partial {
                unreachable: 0,
                busy,
            } => format!(
                "{busy} host(s) busy (a maintenance job, another run, or a shut apply window); applying to them when they are free"
            ),
            Verdict::Partial { unreachable, busy } => format!(
                "{unreachable} host(s) unreachable{}; trying again with backoff",
                if *busy > 0 {
                    format!(", {busy} busy")
                } else {
                    String::new()
                }
            ),
            Verdict::Quarantined { servers, .. } if *servers > 0 => {
                format!("{servers} server change(s) failed; commit quarantined")
            }
            Verdict::Quarantined { hosts, .. } => {
                format!("apply failed on {hosts} of {total} host(s); commit quarantined")
            }
        }
    }
}

pub(super) fn host_status(
    mut h: HostStatus,
    r: &HostResult,
    commit: &str,
    applied: bool,
) -> HostStatus {
    h.last_reconcile = Some(now());
    h.duration_ms = Some(r.elapsed.as_millis() as u64);
    h.error_kind = r.error_kind;
    let error = r.error.clone().unwrap_or_default();
    match (r.outcome_kind(applied), &r.plan) {
        (HostOutcome::Failed(HostError::Locked), _) => {
            // Another run holds the host: not a failure of this commit; look again soon.
            h.state = HostState::Pending;
            h.last_error = Some(error);
            h.last_result = Some("waiting for the host's lock".into());
        }
        (HostOutcome::Failed(HostError::RolloutStopped), _) => {
            // Left as it was: the rollout stopped before reaching it.
            h.state = HostState::Pending;
            h.last_error = Some(error);
            h.last_result = Some("not applied: the rollout stopped".into());
        }
        (HostOutcome::Failed(HostError::NotCreated), _) => {
            // A cloud server the cloud stage has not created yet.
            h.state = HostState::Pending;
            h.last_error = None;
            h.last_result = Some("not created yet: no address".into());
        }
        (HostOutcome::Failed(kind), plan) => {
            h.state = if plan.is_none() && kind == HostError::Unreachable {
                HostState::Unreachable
            } else {
                HostState::Failed
            };
            // An unreachable host has an alert of its own.
            if applied && h.state == HostState::Failed {
                h.failed_apply = Some(super::status::FailedApply {
                    commit: commit.to_string(),
                    error: error.clone(),
                    kind,
                });
            }
            h.last_error = Some(error);
            h.last_result = Some(match (applied, r.done.filter(|d| !d.is_empty())) {
                // What the host reported done before the failure, as the CLI counts it.
                (true, Some(d)) => format!("apply failed after {}", d.done_short()),
                (true, None) => "apply failed".into(),
                (false, _) => "plan failed".into(),
            });
        }
        (HostOutcome::Applied, Some(p)) => {
            h.failed_apply = None;
            h.last_error = None;
            h.state = HostState::Synced;
            h.applied_commit = Some(commit.to_string());
            h.drift.clear();
            h.last_result = Some(if p.has_changes() {
                // Counted as the CLI counts it: what the host reported done.
                let done = r.done.unwrap_or_else(|| engine::render::Totals::of(p));
                format!("applied: {}", done.done_short())
            } else {
                "no changes".into()
            });
        }
        (HostOutcome::Planned, Some(p)) if p.has_changes() || !p.blocked.is_empty() => {
            // A blocked plan is work left undone, never "no drift".
            h.last_error = None;
            h.state = HostState::Drifted;
            h.drift = p
                .changes
                .iter()
                .map(|c| format!("{} {} {}", c.action.symbol(), c.kind, c.id))
                .chain(p.blocked.iter().map(|b| format!("blocked: {b}")))
                .collect();
            h.last_result = Some(format!("drift: {} resource(s)", h.drift.len()));
        }
        (HostOutcome::Planned, Some(_)) => {
            h.last_error = None;
            h.state = HostState::Synced;
            h.drift.clear();
            h.last_result = Some("no drift".into());
        }
        (HostOutcome::Skipped | HostOutcome::Applied | HostOutcome::Planned, _) => {
            if let Some(why) = &r.skipped {
                // A server that is off or not created yet: not a failure.
                h.state = HostState::Pending;
                h.last_error = None;
                h.last_result = Some(why.clone());
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, state: HostState, kind: Option<HostError>) -> HostStatus {
        let mut h = HostStatus::new(name);
        h.state = state;
        h.error_kind = kind;
        if kind.is_some() {
            h.last_error = Some(format!("{name} broke"));
        }
        h
    }

    #[test]
    fn a_plan_whose_file_content_moved_since_review_differs_and_names_the_file() {
        let r = Review {
            proposal: "refs/pull/4/head".into(),
            reviewed: proposals::Reviewed {
                tree: "t".into(),
                digest: "aaaa".into(),
                lines: vec!["web1 ~ file /etc/app.conf content 1111".into()],
            },
            accept: false,
            required: true,
            stale: None,
        };
        assert_eq!(compare_review(&r, "aaaa", &r.reviewed.lines.clone()), None);
        let text = compare_review(
            &r,
            "bbbb",
            &["web1 ~ file /etc/app.conf content 2222".into()],
        )
        .unwrap();
        assert!(
            text.contains("refs/pull/4/head")
                && text.contains("now also:     web1 ~ file /etc/app.conf content 2222")
                && text.contains("reviewed, no longer: web1 ~ file /etc/app.conf content 1111"),
            "{text}"
        );
    }

    #[test]
    fn a_commit_every_host_took_is_applied() {
        let hosts = [
            host("web1", HostState::Synced, None),
            host("web2", HostState::Synced, None),
        ];
        let v = verdict(&hosts, &[]);
        assert_eq!(v, Verdict::Applied);
        assert_eq!(v.summary(hosts.len()), "applied to 2 host(s)");
    }

    #[test]
    fn unreachable_and_busy_hosts_leave_the_commit_applied_in_part() {
        let hosts = [
            host("web1", HostState::Synced, None),
            host("web2", HostState::Unreachable, Some(HostError::Unreachable)),
            host("web3", HostState::Pending, Some(HostError::Locked)),
        ];
        let v = verdict(&hosts, &[]);
        assert_eq!(
            v,
            Verdict::Partial {
                unreachable: 1,
                busy: 1
            }
        );
        assert_eq!(
            v.summary(3),
            "1 host(s) unreachable, 1 busy; trying again with backoff"
        );
        let busy = [host(
            "web3",
            HostState::Pending,
            Some(HostError::NotCreated),
        )];
        assert_eq!(
            verdict(&busy, &[]),
            Verdict::Partial {
                unreachable: 0,
                busy: 1
            }
        );
        assert!(verdict(&busy, &[]).summary(1).starts_with("1 host(s) busy"));
    }

    #[test]
    fn a_failed_host_quarantines_the_commit_even_beside_unreachable_ones() {
        let hosts = [
            host("web1", HostState::Failed, Some(HostError::StepFailed)),
            host("web2", HostState::Unreachable, Some(HostError::Unreachable)),
            host("web3", HostState::Synced, None),
        ];
        let v = verdict(&hosts, &[]);
        assert_eq!(
            v,
            Verdict::Quarantined {
                reason: "web1: web1 broke".into(),
                servers: 0,
                hosts: 1
            }
        );
        assert_eq!(
            v.summary(3),
            "apply failed on 1 of 3 host(s); commit quarantined"
        );
    }

    #[test]
    fn a_failed_server_change_quarantines_the_commit_whatever_the_hosts_did() {
        let hosts = [host("web1", HostState::Synced, None)];
        let failures = vec!["db1 create: quota".to_string(), "db2 resize: no".into()];
        let v = verdict(&hosts, &failures);
        assert_eq!(
            v,
            Verdict::Quarantined {
                reason: "db1 create: quota; db2 resize: no".into(),
                servers: 2,
                hosts: 0
            }
        );
        assert_eq!(
            v.summary(1),
            "2 server change(s) failed; commit quarantined"
        );
    }
}
