//! Rollouts of a commit across hosts (`rollout:` in tidekeeper.yaml, and in
//! the host file of a `count: N` group): canary hosts first, each alone,
//! then the others in batches, with health gates after each stage and a
//! pause before the next; the first failure stops it and leaves the hosts
//! not reached untouched. The stages are pure ([`Fleet::rollout_stages`]).
//!
//! A rollout runs in its own task holding its hosts' locks, like a
//! maintenance job: during a ten-minute pause the loop goes on serving
//! other hosts, jobs, drift checks and proposals. Each stage is reported to
//! the loop (the status page and branch show it); the end is recorded and
//! reported like any other apply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{Instrument, info, info_span, warn};

use super::commit::{Done, Start};
use super::scheduler::{Request, Requeue};
use super::status::RolloutStatus;
use super::{Ctx, State};
use crate::clock::Clock;
use crate::engine::{self, HostError, HostResult};
use crate::model::desired::{Fleet, Stage};
use crate::reconcile::{self, FleetPlan};

/// What a rollout tells the loop.
pub(super) enum Event {
    /// A stage starts, or a pause.
    Progress(RolloutStatus),
    /// It ended (done or stopped); its hosts are free again.
    Ended {
        commit: String,
        done: Box<Done>,
        status: RolloutStatus,
    },
}

impl Ctx {
    /// Start `s` in its own task.
    pub(super) fn roll_out(&self, s: Start) {
        let span = info_span!("rollout", commit = %&s.commit[..s.commit.len().min(12)]);
        tokio::spawn(run(s, self.clock.clone(), self.rollout_tx.clone()).instrument(span));
    }
}

pub(super) async fn rollout_event(ctx: &Ctx, state: &mut State, ev: Event) {
    match ev {
        Event::Progress(st) => {
            ctx.shared.status.lock().unwrap().rollout = Some(st);
            ctx.push_status(None).await;
        }
        Event::Ended {
            commit,
            done,
            status,
        } => {
            ctx.shared.status.lock().unwrap().rollout = Some(status);
            let Some((fleet, started)) = state.rolling.remove(&commit) else {
                return;
            };
            let reconciled = ctx.record(&commit, &fleet, *done);
            let outcome =
                super::commit::report(ctx, state, commit, &fleet, reconciled, started).await;
            super::settle(ctx, state, Request::Head, outcome.map(|()| Requeue::Done));
            // A commit that came meanwhile waited for these hosts.
            ctx.sched.now(Request::Head);
        }
    }
}

/// Apply the plan stage by stage; report each stage and the end on `tx`.
async fn run(s: Start, clock: Clock, tx: UnboundedSender<Event>) {
    let Start {
        commit,
        plan,
        pool,
        stages,
        opts,
        clouds,
        mut held,
        busy,
        cloud_errors,
        review,
    } = s;
    let FleetPlan {
        fleet,
        mut cloud,
        hosts,
        new_servers,
    } = plan;
    let stages = servers_first(stages, &new_servers);
    let mut pending: HashMap<String, HostResult> =
        hosts.into_iter().map(|p| (p.host.clone(), p)).collect();
    let quiet: engine::Progress = Arc::new(|_| {});
    let (mut results, mut outcomes) = (Vec::new(), Vec::new());
    let total = stages.len();
    let short = commit[..commit.len().min(12)].to_string();
    let status = |stage: usize, hosts: &[String], state: String| RolloutStatus {
        commit: short.clone(),
        stage,
        stages: total,
        hosts: hosts.to_vec(),
        state,
    };
    let mut stopped = None;
    for (i, stage) in stages.iter().enumerate() {
        let _ = tx.send(Event::Progress(status(
            i + 1,
            &stage.hosts,
            "applying".into(),
        )));
        info!(stage = i + 1, of = total, hosts = %stage.hosts.join(","), group = stage.group.as_deref().unwrap_or(""), "rollout stage");
        let part = stage_plan(&fleet, cloud.take(), &mut pending, &new_servers, stage);
        let done = clock
            .io({
                let (opts, clouds, quiet, pool) =
                    (opts.clone(), clouds.clone(), quiet.clone(), pool.clone());
                async move { reconcile::apply(part, &pool, opts, &clouds, quiet).await }
            })
            .await;
        outcomes.extend(done.cloud);
        let mut stage_results = done.hosts;
        let why = stopped_by(&mut stage_results, stage, &fleet, &opts, &clock).await;
        results.extend(stage_results);
        if let Some(why) = why {
            warn!(stage = i + 1, %why, "rollout stopped; the other hosts are left as they are");
            stopped = Some((i + 1, why));
            break;
        }
        // Done with these hosts: jobs and newer commits may have them now.
        held.release(&stage.hosts);
        if i + 1 < total && stage.pause_secs > 0 {
            let _ = tx.send(Event::Progress(status(
                i + 1,
                &stage.hosts,
                "pausing".into(),
            )));
            // On the controller's clock: virtual in tests.
            tokio::time::sleep(Duration::from_secs(stage.pause_secs)).await;
        }
    }
    // Hosts the rollout did not reach: planned, not applied.
    let left: Vec<HostResult> = pending.into_values().collect();
    let names: Vec<String> = left.iter().map(|r| r.host.clone()).collect();
    clock.io(async move { pool.close(names).await }).await;
    results.extend(not_reached(left, stopped.clone().unwrap_or_default()));
    let (stage, state, last) = last_stage(&stages, stopped.as_ref());
    let order: Vec<&String> = fleet.hosts.iter().map(|h| &h.name).collect();
    results.sort_by_key(|r| order.iter().position(|n| **n == r.host));
    // Free the hosts before the loop hears of the end: it looks at once.
    drop(held);
    let _ = tx.send(Event::Ended {
        commit,
        done: Box::new(Done {
            results,
            outcomes,
            busy,
            cloud_errors,
            new_servers,
            apply: true,
            review,
        }),
        status: status(stage, &last, state),
    });
}

/// Servers are made in the first stage: their hosts are configured there.
fn servers_first(mut stages: Vec<Stage>, new_servers: &[String]) -> Vec<Stage> {
    if new_servers.is_empty() {
        return stages;
    }
    for s in stages.iter_mut() {
        s.hosts.retain(|h| !new_servers.contains(h));
    }
    stages.retain(|s| !s.hosts.is_empty());
    stages.insert(
        0,
        Stage {
            hosts: new_servers.to_vec(),
            health: vec![],
            pause_secs: 0,
            group: None,
        },
    );
    stages
}

/// Why the rollout stops after this stage, if it does: a host failed (busy
/// ones only wait), or one applied but fails the stage's health gates
/// (marked so in its result).
async fn stopped_by(
    results: &mut [HostResult],
    stage: &Stage,
    fleet: &Arc<Fleet>,
    opts: &Arc<engine::Options>,
    clock: &Clock,
) -> Option<String> {
    let failed = results
        .iter()
        .find(|r| r.error.is_some() && !r.error_kind.is_some_and(HostError::is_transient));
    if let Some(r) = failed {
        return Some(format!("{} failed", r.host));
    }
    if stage.health.is_empty() {
        return None;
    }
    for r in results.iter_mut().filter(|r| r.error.is_none()) {
        let Some(host) = fleet.host(&r.host).cloned() else {
            continue;
        };
        let (f, gates, o) = (fleet.clone(), stage.health.clone(), opts.clone());
        let healthy = clock
            .io(async move { engine::health::check_host(&f, &host, &gates, &o).await })
            .await;
        if let Err(e) = healthy {
            r.fail(HostError::Unhealthy, format!("after the apply: {e}"));
            return Some(format!("{} is unhealthy", r.host));
        }
    }
    None
}

/// Hosts the rollout did not reach: planned, not applied, and why.
fn not_reached(left: Vec<HostResult>, (stage, why): (usize, String)) -> Vec<HostResult> {
    left.into_iter()
        .map(|mut r| {
            r.fail(
                HostError::RolloutStopped,
                format!("not applied: the rollout stopped at stage {stage} ({why})"),
            );
            r
        })
        .collect()
}

/// The part of the plan a stage applies: its hosts (taken from `pending`),
/// its new servers, and the cloud plan (the first stage's).
fn stage_plan(
    fleet: &Arc<Fleet>,
    cloud: Option<crate::cloud::plan::CloudPlan>,
    pending: &mut HashMap<String, HostResult>,
    new_servers: &[String],
    stage: &Stage,
) -> FleetPlan {
    FleetPlan {
        fleet: fleet.clone(),
        cloud,
        hosts: stage
            .hosts
            .iter()
            .filter_map(|h| pending.remove(h))
            .collect(),
        new_servers: new_servers
            .iter()
            .filter(|n| stage.hosts.contains(n))
            .cloned()
            .collect(),
    }
}

/// Where the rollout ended: the stage, its state (done, or stopped and
/// why) and that stage's hosts.
fn last_stage(stages: &[Stage], stopped: Option<&(usize, String)>) -> (usize, String, Vec<String>) {
    let (stage, state) = match stopped {
        Some((n, why)) => (*n, format!("stopped: {why}")),
        None => (stages.len(), "done".to_string()),
    };
    let hosts = stages
        .get(stage.saturating_sub(1))
        .map(|s| s.hosts.clone())
        .unwrap_or_default();
    (stage, state, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(hosts: &[&str]) -> Stage {
        Stage {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            health: vec![],
            pause_secs: 60,
            group: None,
        }
    }

    #[test]
    fn new_servers_make_the_first_stage_and_leave_the_others() {
        let stages = vec![stage(&["web1"]), stage(&["web2", "db1"]), stage(&["db2"])];
        let new = vec!["db1".to_string(), "db2".to_string()];
        let got = servers_first(stages, &new);
        let hosts: Vec<Vec<String>> = got.iter().map(|s| s.hosts.clone()).collect();
        assert_eq!(
            hosts,
            vec![new.clone(), vec!["web1".into()], vec!["web2".into()]]
        );
        assert_eq!(got[0].pause_secs, 0, "no pause after making servers");
        let unchanged = servers_first(vec![stage(&["web1"])], &[]);
        assert_eq!(unchanged.len(), 1);
    }

    #[test]
    fn a_stopped_rollout_ends_at_the_stage_that_stopped_it() {
        let stages = vec![stage(&["web1"]), stage(&["web2", "web3"])];
        assert_eq!(
            last_stage(&stages, None),
            (2, "done".into(), vec!["web2".into(), "web3".into()])
        );
        assert_eq!(
            last_stage(&stages, Some(&(1, "web1 failed".into()))),
            (1, "stopped: web1 failed".into(), vec!["web1".into()])
        );
    }
}
