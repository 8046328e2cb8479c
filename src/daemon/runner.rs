//! The runner: one loop that takes what the scheduler says is due, runs it,
//! and settles what comes next — the request's own interval, or the error
//! policy's backoff with jitter for its key. Jobs and rollouts report back
//! to it from their own tasks.

use tracing::info;

use super::scheduler::{Again, Request, Requeue};
use super::status::{self, FleetStatus};
use super::{Ctx, Loop, State, now};
use crate::source::ConfigTree;

impl Loop {
    pub(super) async fn run(mut self) {
        // After a restart, the status branch says what was already applied;
        // which branch that is, the head's config says.
        if let Some(head) = super::fetch(&self.ctx, &mut self.st).await {
            resume(&self.ctx, &mut self.st, head).await;
        }
        let mut done = self.job_rx.take().expect("run once");
        let mut rollouts = self.rollout_rx.take().expect("run once");
        let mut planned = self.proposal_rx.take().expect("run once");
        self.ctx
            .sched
            .after(Request::Head, super::poll_interval(&self.ctx, &self.st));
        self.ctx
            .sched
            .after(Request::Drift, super::drift_interval(&self.ctx, &self.st));
        if !self.ctx.cfg.proposals.is_empty() {
            self.ctx.sched.now(Request::Proposals);
        }
        loop {
            let req = tokio::select! {
                biased;
                _ = self.ctx.shutdown.notified() => break,
                Some(d) = done.recv() => {
                    super::jobs::job_finished(&self.ctx, &mut self.st, d).await;
                    super::alerts(&self.ctx, &self.st);
                    continue;
                }
                Some(ev) = rollouts.recv() => {
                    super::rollout::rollout_event(&self.ctx, &mut self.st, ev).await;
                    super::alerts(&self.ctx, &self.st);
                    continue;
                }
                Some(p) = planned.recv() => {
                    super::proposals::proposal_planned(&self.ctx, &mut self.st, p).await;
                    super::alerts(&self.ctx, &self.st);
                    continue;
                }
                r = self.ctx.sched.next() => r,
            };
            let outcome = handle(&self.ctx, &mut self.st, &req).await;
            // A retry is a head like any other from here on.
            let key = if req == Request::Retry {
                Request::Head
            } else {
                req
            };
            super::settle(&self.ctx, &mut self.st, key, outcome);
            super::alerts(&self.ctx, &self.st);
            release_memory();
        }
        info!("reconcile loop stopped");
    }
}

/// After a restart, the status branch says what was already applied
/// (which branch that is, the head's config says); then the head is
/// looked at, and jobs due meanwhile are caught up.
async fn resume(ctx: &Ctx, state: &mut State, head: String) {
    let path = ctx.mirror.lock().unwrap().path.clone();
    let h = head.clone();
    let settings = tokio::task::spawn_blocking(move || {
        ConfigTree::from_git(&path, &h)
            .ok()
            .and_then(|t| crate::model::load(&t).ok())
    })
    .await
    .ok()
    .flatten();
    if let Some(f) = settings {
        ctx.adopt_status_refs(&f).await;
    }
    let (prior, timeline, commits) = ctx
        .blocking(|m| {
            let timeline = m.status_timeline(super::TIMELINE);
            let commits: std::collections::BTreeMap<_, _> = timeline
                .iter()
                .filter_map(|(_, c)| {
                    let (subject, author) = m.commit_info(c)?;
                    Some((c.clone(), super::history::CommitInfo { subject, author }))
                })
                .collect();
            (m.status_file("status/fleet.json"), timeline, commits)
        })
        .await;
    {
        let mut board = ctx.shared.board.lock().unwrap();
        board.timeline = timeline;
        board.commits = commits;
    }
    let prior = prior.and_then(|b| serde_json::from_slice::<FleetStatus>(&b).ok());
    if let Some(p) = prior {
        let mut st = ctx.shared.status.lock().unwrap();
        st.written_back = Some(status::WrittenBack {
            at: now(),
            applied_commit: p.applied_commit.clone(),
            noted_commit: None,
        });
        st.applied_commit = p.applied_commit;
        st.quarantined = p.quarantined;
        st.held = p.held;
        st.hosts = p.hosts;
        st.fleet = p.fleet;
        st.learned_host_keys = p.learned_host_keys;
        st.schedules = p.schedules;
        // An operator's suspension outlives a restart; the config's
        // is read again from the commit.
        st.suspended = p.suspended.filter(|s| s.source == "operator");
    }
    state.head.reviewed_only = applied_requires_review(ctx).await;
    ctx.shared.status.lock().unwrap().head_commit = Some(head.clone());
    state.head.last_seen = Some(head.clone());
    if let Err(again) = super::commit::on_commit(ctx, state, head, false).await {
        super::settle(ctx, state, Request::Head, Err(again));
    }
    super::jobs::catch_up(ctx, state);
}

/// Whether the commit the status branch says was applied has
/// `apply.require_reviewed_plan` on: after a restart as before it, a commit
/// turning the setting off is itself held.
async fn applied_requires_review(ctx: &Ctx) -> bool {
    let Some(applied) = ctx.shared.status.lock().unwrap().applied_commit.clone() else {
        return false;
    };
    let path = ctx.mirror.lock().unwrap().path.clone();
    tokio::task::spawn_blocking(move || {
        ConfigTree::from_git(&path, &applied)
            .ok()
            .and_then(|t| crate::model::load(&t).ok())
            .is_some_and(|f| f.settings.require_reviewed_plan)
    })
    .await
    .unwrap_or(false)
}

/// What a request does; what it asks for next.
async fn handle(ctx: &Ctx, state: &mut State, req: &Request) -> Result<Requeue, Again> {
    match req {
        Request::Head => super::triggers::on_head(ctx, state, false).await,
        Request::Retry => super::triggers::on_head(ctx, state, true).await,
        Request::Proposals => {
            super::proposals::look_at_proposals(ctx, state).await;
            Ok(Requeue::Done)
        }
        Request::Proposal(name) => super::proposals::plan_proposal_ref(ctx, state, name).await,
        Request::Drift => {
            super::drift::on_drift(ctx, state).await;
            Ok(Requeue::After(super::drift_interval(ctx, state)))
        }
        Request::Job(name) => match state.jobs.due.get(name).copied() {
            // Due by the wall clock (a reschedule may have moved it since).
            Some(t) if ctx.clock.now() + chrono::Duration::seconds(1) >= t => {
                super::jobs::start_job(ctx, state, name);
                Ok(Requeue::Done)
            }
            Some(t) => {
                ctx.sched.at(req.clone(), ctx.clock.instant_of(t));
                Ok(Requeue::Done)
            }
            None => Ok(Requeue::Done),
        },
        Request::RunJob(name) => {
            super::jobs::start_job(ctx, state, name);
            Ok(Requeue::Done)
        }
    }
}

/// Give what a reconcile freed back to the system. glibc keeps freed pages
/// in its arenas: a daemon that planned 500 hosts would stay at that size,
/// and the next reconcile's allocations would land beside, not in, them.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
