//! The runner: one loop that takes what the scheduler says is due, runs it,
//! and settles what comes next — the request's own interval, or the error
//! policy's backoff with jitter for its key. Jobs and rollouts report back
//! to it from their own tasks.

use tracing::info;

use super::scheduler::{Again, Request, Requeue};
use super::status::{self, FleetStatus};
use super::{Loop, now};
use crate::source::ConfigTree;

impl Loop {
    pub(super) async fn run(mut self) {
        // After a restart, the status branch says what was already applied;
        // which branch that is, the head's config says.
        if let Some(head) = self.fetch().await {
            self.resume(head).await;
        }
        let mut done = self.job_rx.take().expect("run once");
        let mut rollouts = self.rollout_rx.take().expect("run once");
        let mut planned = self.proposal_rx.take().expect("run once");
        self.ctx.sched.after(Request::Head, self.poll_interval());
        self.ctx.sched.after(Request::Drift, self.drift_interval());
        if !self.ctx.cfg.proposals.is_empty() {
            self.ctx.sched.now(Request::Proposals);
        }
        loop {
            let req = tokio::select! {
                biased;
                _ = self.ctx.shutdown.notified() => break,
                Some(d) = done.recv() => {
                    self.job_finished(d).await;
                    self.alerts();
                    continue;
                }
                Some(ev) = rollouts.recv() => {
                    self.rollout_event(ev).await;
                    self.alerts();
                    continue;
                }
                Some(p) = planned.recv() => {
                    self.proposal_planned(p).await;
                    self.alerts();
                    continue;
                }
                r = self.ctx.sched.next() => r,
            };
            self.ctx.shared.metrics.lock().unwrap().queue = self.ctx.sched.len() as u64;
            let outcome = self.handle(&req).await;
            // A retry is a head like any other from here on.
            let key = if req == Request::Retry {
                Request::Head
            } else {
                req
            };
            self.settle(key, outcome);
            self.alerts();
            release_memory();
        }
        info!("reconcile loop stopped");
    }

    /// After a restart, the status branch says what was already applied
    /// (which branch that is, the head's config says); then the head is
    /// looked at, and jobs due meanwhile are caught up.
    async fn resume(&mut self, head: String) {
        let path = self.ctx.mirror.lock().unwrap().path.clone();
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
            self.ctx.adopt_status_refs(&f).await;
        }
        let (prior, timeline) = self
            .ctx
            .blocking(|m| {
                (
                    m.status_file("status/fleet.json"),
                    m.status_timeline(super::TIMELINE),
                )
            })
            .await;
        self.ctx.shared.board.lock().unwrap().timeline = timeline;
        let prior = prior.and_then(|b| serde_json::from_slice::<FleetStatus>(&b).ok());
        if let Some(p) = prior {
            let mut st = self.ctx.shared.status.lock().unwrap();
            st.written_back = Some(status::WrittenBack {
                at: now(),
                applied_commit: p.applied_commit.clone(),
                noted_commit: None,
            });
            st.applied_commit = p.applied_commit;
            st.quarantined = p.quarantined;
            st.hosts = p.hosts;
            st.fleet = p.fleet;
            st.learned_host_keys = p.learned_host_keys;
            st.schedules = p.schedules;
            // An operator's suspension outlives a restart; the config's
            // is read again from the commit.
            st.suspended = p.suspended.filter(|s| s.source == "operator");
        }
        self.ctx.shared.status.lock().unwrap().head_commit = Some(head.clone());
        self.st.head.last_seen = Some(head.clone());
        if let Err(again) = self.on_commit(head, false).await {
            self.settle(Request::Head, Err(again));
        }
        self.catch_up();
    }

    /// What a request does; what it asks for next.
    async fn handle(&mut self, req: &Request) -> Result<Requeue, Again> {
        match req {
            Request::Head => self.on_head(false).await,
            Request::Retry => self.on_head(true).await,
            Request::Proposals => {
                self.look_at_proposals().await;
                Ok(Requeue::Done)
            }
            Request::Proposal(name) => self.plan_proposal_ref(name).await,
            Request::Drift => {
                super::drift::on_drift(&self.ctx, &mut self.st).await;
                Ok(Requeue::After(self.drift_interval()))
            }
            Request::Job(name) => match self.st.jobs.due.get(name).copied() {
                // Due by the wall clock (a reschedule may have moved it since).
                Some(t) if self.ctx.clock.now() + chrono::Duration::seconds(1) >= t => {
                    self.start_job(name);
                    Ok(Requeue::Done)
                }
                Some(t) => {
                    self.ctx.sched.at(req.clone(), self.ctx.clock.instant_of(t));
                    Ok(Requeue::Done)
                }
                None => Ok(Requeue::Done),
            },
            Request::RunJob(name) => {
                self.start_job(name);
                Ok(Requeue::Done)
            }
        }
    }

    /// What a request asked for next: its regular interval, or the error
    /// policy's backoff with jitter for its key.
    pub(super) fn settle(&mut self, req: Request, outcome: Result<Requeue, Again>) {
        match outcome {
            Ok(next) => {
                self.st.backoff.succeeded(&req);
                if let Requeue::After(d) = next {
                    self.ctx.sched.after(req, d);
                }
            }
            Err(again) => {
                let interval = match req {
                    Request::Drift => self.drift_interval(),
                    _ => self.poll_interval(),
                };
                let (first, max, keep_interval) = again.policy(interval);
                let wait = self.st.backoff.failed(&req, first, max);
                info!(request = req.label(), reason = %again, failures = self.st.backoff.failures(&req), retry_in_ms = wait.as_millis() as u64, "trying again");
                *self
                    .ctx
                    .shared
                    .metrics
                    .lock()
                    .unwrap()
                    .requeues
                    .entry(again.label())
                    .or_default() += 1;
                if keep_interval {
                    self.ctx.sched.after(req.clone(), interval);
                }
                self.ctx.sched.after(req, wait);
            }
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
