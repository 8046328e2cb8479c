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

use super::Loop;
use super::commit::{Done, Start};
use super::scheduler::{Request, Requeue};
use super::status::RolloutStatus;
use crate::clock::Clock;
use crate::engine::{self, HostError, HostResult};
use crate::model::desired::Stage;
use crate::reconcile::{self, FleetPlan};

/// What a rollout tells the loop.
pub enum Event {
    /// A stage starts, or a pause.
    Progress(RolloutStatus),
    /// It ended (done or stopped); its hosts are free again.
    Ended {
        commit: String,
        done: Box<Done>,
        status: RolloutStatus,
    },
}

impl Loop {
    /// Start `s` in its own task.
    pub(super) fn roll_out(&mut self, s: Start) {
        let span = info_span!("rollout", commit = %&s.commit[..s.commit.len().min(12)]);
        tokio::spawn(run(s, self.clock.clone(), self.rollout_tx.clone()).instrument(span));
    }

    pub(super) async fn rollout_event(&mut self, ev: Event) {
        match ev {
            Event::Progress(st) => {
                self.shared.status.lock().unwrap().rollout = Some(st);
                self.push_status(None).await;
            }
            Event::Ended {
                commit,
                done,
                status,
            } => {
                self.shared.status.lock().unwrap().rollout = Some(status);
                let Some((fleet, started)) = self.rolling.remove(&commit) else {
                    return;
                };
                let reconciled = self.record(&commit, &fleet, *done);
                let outcome = self.report(commit, &fleet, reconciled, started).await;
                self.settle(Request::Head, outcome.map(|()| Requeue::Done));
                // A commit that came meanwhile waited for these hosts.
                self.sched.now(Request::Head);
            }
        }
    }
}

/// Apply the plan stage by stage; report each stage and the end on `tx`.
async fn run(s: Start, clock: Clock, tx: UnboundedSender<Event>) {
    let Start {
        commit,
        plan,
        pool,
        mut stages,
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
    // Servers are made in the first stage: their hosts are configured there.
    if !new_servers.is_empty() {
        for s in stages.iter_mut() {
            s.hosts.retain(|h| !new_servers.contains(h));
        }
        stages.retain(|s| !s.hosts.is_empty());
        stages.insert(
            0,
            Stage {
                hosts: new_servers.clone(),
                health: vec![],
                pause_secs: 0,
                group: None,
            },
        );
    }
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
        let part = FleetPlan {
            fleet: fleet.clone(),
            cloud: cloud.take(),
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
        };
        let done = clock
            .io({
                let (opts, clouds, quiet, pool) =
                    (opts.clone(), clouds.clone(), quiet.clone(), pool.clone());
                async move { reconcile::apply(part, &pool, opts, &clouds, quiet).await }
            })
            .await;
        outcomes.extend(done.cloud);
        let mut stage_results = done.hosts;
        let mut why = stage_results
            .iter()
            .find(|r| r.error.is_some() && !r.error_kind.is_some_and(HostError::is_transient))
            .map(|r| format!("{} failed", r.host));
        if why.is_none() && !stage.health.is_empty() {
            for r in stage_results.iter_mut().filter(|r| r.error.is_none()) {
                let Some(host) = fleet.host(&r.host).cloned() else {
                    continue;
                };
                let (f, gates, o) = (fleet.clone(), stage.health.clone(), opts.clone());
                let healthy = clock
                    .io(async move { engine::health::check_host(&f, &host, &gates, &o).await })
                    .await;
                if let Err(e) = healthy {
                    r.fail(HostError::Unhealthy, format!("after the apply: {e}"));
                    why = Some(format!("{} is unhealthy", r.host));
                    break;
                }
            }
        }
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
    for mut r in left {
        let (stage, why) = stopped.clone().unwrap_or_default();
        r.fail(
            HostError::RolloutStopped,
            format!("not applied: the rollout stopped at stage {stage} ({why})"),
        );
        results.push(r);
    }
    let (stage, state) = match &stopped {
        Some((n, why)) => (*n, format!("stopped: {why}")),
        None => (total, "done".to_string()),
    };
    let last = stages
        .get(stage.saturating_sub(1))
        .map(|s| s.hosts.clone())
        .unwrap_or_default();
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
