//! Maintenance jobs under the daemon: due times from cron (and catch-up
//! after downtime) become scheduler requests; each run goes on in its own
//! task holding the locks of its hosts, so a two-hour backup on one host
//! never holds up a commit for the others. The run's result comes back to
//! the loop, which records it.

use std::sync::Arc;

use tracing::{Instrument, info, info_span, warn};

use super::scheduler::Request;
use super::{Ctx, State};
use crate::maintenance::run::JobRun;
use crate::model::desired::{Fleet, Job};

/// A job run that finished (or never started).
pub(super) struct JobDone {
    pub name: String,
    pub commit: String,
    pub run: JobRun,
}

/// Next due times of every job in the good config, handed to the scheduler.
pub(super) fn reschedule(ctx: &Ctx, state: &mut State, after: chrono::DateTime<chrono::Utc>) {
    let Some((_, fleet, _)) = &state.head.good else {
        return;
    };
    let mut st = ctx.shared.status.lock().unwrap();
    st.schedules
        .retain(|name, _| fleet.jobs.iter().any(|j| j.name == *name));
    for name in state.jobs.due.keys() {
        if !fleet.jobs.iter().any(|j| j.name == *name) {
            ctx.sched.cancel(&Request::Job(name.clone()));
        }
    }
    state.jobs.due.clear();
    for job in &fleet.jobs {
        let next = crate::maintenance::plan::next(job, after);
        let entry = st.schedules.entry(job.name.clone()).or_default();
        entry.next_run = next.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        match next {
            Some(t) => {
                state.jobs.due.insert(job.name.clone(), t);
                ctx.sched
                    .reset(Request::Job(job.name.clone()), ctx.clock.instant_of(t));
            }
            None => ctx.sched.cancel(&Request::Job(job.name.clone())),
        }
    }
}

/// The job's request came due: start it in the background, unless it
/// still runs (then this due time is skipped, as cron would overlap).
pub(super) fn start_job(ctx: &Ctx, state: &mut State, name: &str) {
    let Some((commit, fleet, _)) = state.head.good.clone() else {
        return;
    };
    let Some(job) = fleet.jobs.iter().find(|j| j.name == name).cloned() else {
        return;
    };
    if let Some(s) = ctx.suspension(&commit, &fleet) {
        info!(job = %name, by = %s.by, "suspended: the job does not run");
        let now = ctx.clock.stamp();
        let _ = ctx.job_done.send(JobDone {
            name: name.to_string(),
            commit,
            run: JobRun {
                job: name.to_string(),
                kind: job.kind.name().into(),
                started: now.clone(),
                finished: now,
                ok: true,
                not_started: Some(format!("not started: suspended by {} ({})", s.by, s.reason)),
                hosts: vec![],
            },
        });
        state.jobs.running.insert(name.to_string());
        return;
    }
    if !state.jobs.running.insert(name.to_string()) {
        warn!(job = %name, "still running from its last due time; this one is skipped");
        reschedule(ctx, state, ctx.clock.now());
        return;
    }
    let only = ctx.cfg.hosts.clone();
    let opts = ctx.options(&fleet, false);
    let locks = ctx.locks.clone();
    let done = ctx.job_done.clone();
    let span = info_span!("maintenance", job = %name);
    tokio::spawn(
        async move {
            let run = run_holding_hosts(fleet, job, only, opts, locks).await;
            let _ = done.send(JobDone {
                name: run.job.clone(),
                commit,
                run,
            });
        }
        .instrument(span),
    );
}

/// Record a finished run; note a failure on the config commit.
pub(super) async fn job_finished(ctx: &Ctx, state: &mut State, d: JobDone) {
    let JobDone { name, commit, run } = d;
    state.jobs.running.remove(&name);
    let result = if run.not_started.is_some() {
        "not-started"
    } else if run.ok {
        "ok"
    } else {
        "failed"
    };
    info!(job = %name, result, "maintenance finished");
    {
        let mut m = ctx.shared.metrics.lock().unwrap();
        *m.maintenance_runs
            .entry((name.clone(), result.to_string()))
            .or_default() += 1;
        if run.ok {
            let now = ctx.clock.now().timestamp();
            m.job_last_success_unix.insert(name.clone(), now);
        }
    }
    let failed = !run.ok && run.not_started.is_none();
    let text = crate::maintenance::render(&run);
    if let Some((_, fleet, _)) = &state.head.good
        && run.not_started.is_none()
    {
        // Good news is sent only where a route names job_succeeded.
        let now = ctx.clock.now();
        let news = run
            .hosts
            .iter()
            .filter(|h| h.result == crate::maintenance::run::HostRunResult::Ok)
            .map(|h| {
                crate::notify::info(
                    &fleet.name,
                    crate::notify::EventKind::JobSucceeded,
                    Some(&h.host),
                    &format!("job {name} on {}", h.host),
                    &format!(
                        "{name} succeeded on {} in {:.1} s",
                        h.host,
                        h.duration_ms as f64 / 1000.0
                    ),
                    now,
                )
            })
            .collect();
        ctx.shared.notifier.send(news);
    }
    {
        let mut st = ctx.shared.status.lock().unwrap();
        st.schedules.entry(name.clone()).or_default().last_run = Some(run);
    }
    reschedule(ctx, state, ctx.clock.now());
    let note = if failed {
        let prior = ctx
            .blocking({
                let c = commit.clone();
                move |m| git2::Oid::from_str(&c).ok().and_then(|o| m.note(o))
            })
            .await
            .unwrap_or_default();
        // Keep the reconcile's part of the note and the latest failure
        // only; the audit trail stays last.
        let (prior, audit) = crate::audit::Audit::split(&prior);
        let head = prior
            .split("\n\nmaintenance job ")
            .next()
            .unwrap_or("")
            .trim_end();
        Some((
            commit.clone(),
            format!(
                "{head}\n\nmaintenance job {name} failed:\n{}{audit}",
                text.trim_end()
            ),
        ))
    } else {
        None
    };
    ctx.push_status(note).await;
    // A commit that waited for these hosts goes on now.
    if state.head.incomplete.is_some() {
        ctx.sched.now(Request::Head);
    }
}

/// At start-up: runs missed while the daemon was down, within each job's grace.
pub(super) fn catch_up(ctx: &Ctx, state: &mut State) {
    let Some((_, fleet, _)) = state.head.good.clone() else {
        return;
    };
    let now = ctx.clock.now();
    for job in &fleet.jobs {
        let last = ctx
            .shared
            .status
            .lock()
            .unwrap()
            .schedules
            .get(&job.name)
            .and_then(|s| s.last_run.as_ref())
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(&r.started).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let Some(last) = last else { continue };
        if crate::maintenance::plan::catch_up(job, Some(last), now).is_some() {
            info!(job = %job.name, "catching up a run missed while tidekeeper was down");
            ctx.sched.now(Request::Job(job.name.clone()));
        }
    }
}

/// Run `job` on its hosts (those of `only`, when the daemon serves only
/// some), holding each host's lock for the whole run: commits and drift
/// checks leave these hosts alone meanwhile and say why.
async fn run_holding_hosts(
    fleet: Arc<Fleet>,
    job: Job,
    only: Vec<String>,
    opts: crate::engine::Options,
    locks: Arc<super::locks::HostLocks>,
) -> JobRun {
    let mut hosts: Vec<String> = job
        .hosts
        .iter()
        .filter(|h| only.is_empty() || only.contains(h))
        .cloned()
        .collect();
    hosts.sort(); // one order for everyone: two jobs never wait on each other in a cycle
    if !only.is_empty() && hosts.is_empty() {
        let now = opts.clock.stamp();
        return JobRun {
            job: job.name.clone(),
            kind: job.kind.name().into(),
            started: now.clone(),
            finished: now,
            ok: true,
            not_started: Some(
                "not started: none of its hosts is served by this daemon (--host)".into(),
            ),
            hosts: vec![],
        };
    }
    let who = format!("maintenance job {}", job.name);
    let mut held = Vec::new();
    for h in &hosts {
        held.push(locks.take(h, &who).await);
    }
    info!("running");
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let only = if only.is_empty() { vec![] } else { hosts };
    let run =
        opts.clock
            .clone()
            .io(async move {
                crate::maintenance::run::run_job(&fleet, &job, &only, &opts, &clouds).await
            })
            .await;
    drop(held);
    run
}
