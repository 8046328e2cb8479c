//! Rollouts of a commit across hosts (`rollout:` in tidekeeper.yaml): the
//! canary hosts first, each alone, then the others in batches, with health
//! gates after each batch and a pause between; the first failure stops it
//! and leaves the hosts not reached untouched. The stages are pure
//! ([`crate::model::desired::Rollout::stages`]); this applies them, and the
//! status page and branch show the rollout while it goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Loop;
use super::status::RolloutStatus;
use crate::cloud::Clouds;
use crate::cloud::apply::CloudOutcome;
use crate::engine::{self, HostError, HostResult, Options, Planned};
use crate::model::desired::Rollout;
use crate::reconcile::{self, FleetPlan};

impl Loop {
    /// Apply `plan` stage by stage.
    pub(super) async fn roll_out(
        &mut self,
        commit: &str,
        plan: FleetPlan,
        rollout: &Rollout,
        opts: Arc<Options>,
        clouds: Arc<Clouds>,
    ) -> (Vec<HostResult>, Vec<CloudOutcome>) {
        let FleetPlan {
            fleet,
            mut cloud,
            hosts,
            new_servers,
        } = plan;
        let names: Vec<String> = hosts.iter().map(|p| p.result().host.clone()).collect();
        let mut stages = rollout.stages(&names);
        // Servers are made in the first stage: their hosts are configured there.
        if !new_servers.is_empty() {
            for s in stages.iter_mut() {
                s.retain(|h| !new_servers.contains(h));
            }
            stages.retain(|s| !s.is_empty());
            stages.insert(0, new_servers.clone());
        }
        let mut pending: HashMap<String, Planned> = hosts
            .into_iter()
            .map(|p| (p.result().host.clone(), p))
            .collect();
        let quiet: engine::Progress = Arc::new(|_| {});
        let (mut results, mut outcomes) = (Vec::new(), Vec::new());
        let total = stages.len();
        let short = &commit[..commit.len().min(12)];
        let mut stopped = None;
        for (i, stage) in stages.iter().enumerate() {
            self.show_rollout(short, i + 1, total, stage, "applying")
                .await;
            info!(stage = i + 1, of = total, hosts = %stage.join(","), "rollout stage");
            let part = FleetPlan {
                fleet: fleet.clone(),
                cloud: cloud.take(),
                hosts: stage.iter().filter_map(|h| pending.remove(h)).collect(),
                new_servers: new_servers
                    .iter()
                    .filter(|n| stage.contains(n))
                    .cloned()
                    .collect(),
            };
            let done = self
                .clock
                .io({
                    let (opts, clouds, quiet) = (opts.clone(), clouds.clone(), quiet.clone());
                    async move { reconcile::apply(part, opts, &clouds, quiet).await }
                })
                .await;
            outcomes.extend(done.cloud);
            let mut stage_results = done.hosts;
            let mut why = stage_results
                .iter()
                .find(|r| r.error.is_some() && !r.error_kind.is_some_and(HostError::is_transient))
                .map(|r| format!("{} failed", r.host));
            if why.is_none() && !rollout.health.is_empty() {
                for r in stage_results.iter_mut().filter(|r| r.error.is_none()) {
                    let Some(host) = fleet.host(&r.host).cloned() else {
                        continue;
                    };
                    let (f, gates, o) = (fleet.clone(), rollout.health.clone(), opts.clone());
                    let healthy = self
                        .clock
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
            if i + 1 < total && rollout.pause_secs > 0 {
                self.show_rollout(short, i + 1, total, stage, "pausing")
                    .await;
                self.clock
                    .sleep(Duration::from_secs(rollout.pause_secs))
                    .await;
            }
        }
        // Hosts the rollout did not reach: planned, not applied.
        let left: Vec<Planned> = pending.into_values().collect();
        for mut r in self.clock.io(engine::finish(left)).await {
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
        let hosts = stages
            .get(stage.saturating_sub(1))
            .cloned()
            .unwrap_or_default();
        self.shared.status.lock().unwrap().rollout = Some(RolloutStatus {
            commit: short.to_string(),
            stage,
            stages: total,
            hosts,
            state,
        });
        let order: Vec<&String> = fleet.hosts.iter().map(|h| &h.name).collect();
        results.sort_by_key(|r| order.iter().position(|n| **n == r.host));
        (results, outcomes)
    }

    /// The rollout in progress, on the status page and branch.
    async fn show_rollout(
        &self,
        commit: &str,
        stage: usize,
        stages: usize,
        hosts: &[String],
        state: &str,
    ) {
        self.shared.status.lock().unwrap().rollout = Some(RolloutStatus {
            commit: commit.to_string(),
            stage,
            stages,
            hosts: hosts.to_vec(),
            state: state.to_string(),
        });
        self.push_status(None).await;
    }
}
