//! A whole reconcile: the cloud stage, then the hosts.
//!
//! Plan: list the providers' servers (one listing per provider), plan the
//! servers (with costs), fill in the addresses and host-key fingerprints of
//! the cloud hosts whose servers run, and plan every reachable host through
//! the host engine. A host whose server is still to be created is planned
//! against an empty machine, so the plan shows what it will get.
//!
//! Apply: create, update, resize and replace servers; apply the hosts that
//! were planned; configure the new servers in the same run (wait for SSH with
//! the generated host key, plan, apply); delete servers last.

use std::sync::Arc;
use std::time::Duration;

use crate::cloud::apply::CloudOutcome;
use crate::cloud::plan::{CloudAction, CloudPlan, PlanOptions as CloudOptions};
use crate::cloud::{self, Clouds, HOST_KEY, PowerState};
use crate::engine::{self, Event, HostResult, Options, Pool, Progress};
use crate::model::desired::{Fleet, ProviderKind};

/// How long a new server may take from "running" to answering SSH.
const SSH_WAIT: Duration = Duration::from_secs(300);

pub struct FleetPlan {
    /// The fleet with the addresses and host keys of running cloud servers.
    pub fleet: Arc<Fleet>,
    /// None when the fleet has no cloud servers to look at.
    pub cloud: Option<CloudPlan>,
    /// Plain data: the hosts' connections stay in the caller's [`Pool`].
    pub hosts: Vec<HostResult>,
    /// Hosts whose server this plan creates (or replaces): configured after.
    pub new_servers: Vec<String>,
}

impl FleetPlan {
    pub fn results(&self) -> Vec<&HostResult> {
        self.hosts.iter().collect()
    }
    pub fn has_changes(&self) -> bool {
        self.cloud.as_ref().is_some_and(|c| c.has_changes())
            || self
                .hosts
                .iter()
                .any(|p| p.plan.as_ref().is_some_and(|x| x.has_changes()))
    }
    /// What stops this plan from being applied as it stands (the cloud's own
    /// refusals; hosts report theirs per host).
    pub fn refusals(&self) -> Vec<String> {
        self.cloud.as_ref().map(|c| c.blocked()).unwrap_or_default()
    }

    /// The one gate every plan passes before it is applied or reported (CLI
    /// plan and apply, the daemon's commits, proposals): the policies'
    /// verdict and the cloud stage's refusals.
    pub fn gate(&self, policies: &[(String, String)]) -> Gate {
        Gate {
            verdict: crate::policy::judge(
                &self.fleet,
                &self.results(),
                self.cloud.as_ref(),
                policies,
            ),
            refusals: self.refusals(),
        }
    }
}

/// What the gate says of a plan.
#[derive(Debug, Clone)]
pub struct Gate {
    pub verdict: crate::policy::Verdict,
    /// Changes the cloud stage will not make (a destroy without permission).
    pub refusals: Vec<String>,
}

impl Gate {
    /// The plan may not be applied.
    pub fn stops(&self) -> bool {
        self.verdict.blocks() || !self.refusals.is_empty()
    }

    /// Why it stops, a line each.
    pub fn reasons(&self) -> Vec<String> {
        let v = &self.verdict;
        v.deny
            .iter()
            .map(|d| format!("policy denies: {d}"))
            .chain(v.errors.iter().map(|e| format!("policy error: {e}")))
            .chain(self.refusals.iter().map(|r| format!("refused: {r}")))
            .collect()
    }
}

/// Everything a reconcile did.
pub struct Applied {
    pub cloud: Vec<CloudOutcome>,
    pub hosts: Vec<HostResult>,
}

/// A host planned against an empty machine: what a new server will get.
fn preview(fleet: &Fleet, name: &str, opts: &Options) -> HostResult {
    let host = fleet.host(name).expect("selected host exists");
    engine::preview(
        host,
        "new server",
        "planned against an empty machine: the server does not exist yet",
        opts,
    )
}

fn why_not_running(s: &PowerState) -> String {
    match s {
        PowerState::Off => "the server is off (stopped by a power schedule or by hand); it is configured when it runs again".into(),
        PowerState::Starting => "the server is starting; it is configured on the next pass".into(),
        PowerState::Stopping => "the server is stopping".into(),
        PowerState::Other(s) => format!("the server is {s}"),
        PowerState::Running => "the server has no public address".into(),
    }
}

/// The fleet with the address and generated host key of every cloud host
/// whose server (created by tidekeeper for this fleet) runs.
/// Could this error go away while a new server is still booting?
fn settling(e: &engine::EngineError) -> bool {
    use crate::transport::TransportError as T;
    matches!(
        e,
        engine::EngineError::Transport(T::Unreachable { .. } | T::Timeout { .. } | T::Lost { .. })
    )
}

/// Render the hosts' templates again where addresses the providers
/// assigned are now known (`host.address`, `hosts.NAME.private_address`).
/// Only what templates make (resources, handlers) is taken from the new
/// reading: settings, pins, SSH and trust stay as the caller set them (a
/// proposal's are the base branch's).
pub fn rerender(mut fleet: Fleet) -> Fleet {
    let known: crate::model::desired::KnownAddresses = fleet
        .hosts
        .iter()
        .filter(|h| matches!(h.provider, ProviderKind::Hetzner | ProviderKind::Lightsail))
        .filter(|h| h.address.is_some() || h.private_address.is_some())
        .map(|h| {
            (
                h.name.clone(),
                (h.address.clone(), h.private_address.clone()),
            )
        })
        .collect();
    let Some(again) = crate::model::reload_with_addresses(&fleet, &known) else {
        return fleet;
    };
    for h in fleet.hosts.iter_mut() {
        if let Some(n) = again.host(&h.name) {
            h.resources = n.resources.clone();
            h.handlers = n.handlers.clone();
        }
    }
    fleet.source = again.source;
    fleet
}

pub fn with_cloud_addresses(fleet: &Fleet, observed: &cloud::Observed) -> Fleet {
    let mut out = fleet.clone();
    for h in out.hosts.iter_mut() {
        let Some(s) = observed
            .server(h.provider, &h.name)
            .filter(|s| s.owned_by(&fleet.name))
        else {
            continue;
        };
        if let (PowerState::Running, Some(addr)) = (&s.state, &s.address) {
            h.address = Some(addr.clone());
            h.cloud_host_key = s.labels.get(HOST_KEY).cloned();
            // The address in the server's first network, as attached.
            let first = h
                .server
                .as_ref()
                .and_then(|sv| sv.networks.first())
                .and_then(|n| s.networks.iter().find(|(name, _)| *name == n.name));
            if let Some((_, ip)) = first {
                h.private_address = Some(ip.clone());
            }
        }
    }
    rerender(out)
}

/// Plan the fleet's `names` (all hosts when `whole_fleet`; only then are
/// servers whose hosts left the config planned for deletion). The hosts'
/// connections are kept in `pool` for [`apply`] or [`finish`].
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    fleet: Arc<Fleet>,
    names: Vec<String>,
    whole_fleet: bool,
    opts: Arc<Options>,
    clouds: &Clouds,
    cloud_opts: CloudOptions,
    progress: Progress,
    pool: &Pool,
) -> FleetPlan {
    let is_cloud = |p: ProviderKind| matches!(p, ProviderKind::Hetzner | ProviderKind::Lightsail);
    let cloud_hosts: Vec<&str> = names
        .iter()
        .filter(|n| fleet.host(n).is_some_and(|h| is_cloud(h.provider)))
        .map(String::as_str)
        .collect();
    if cloud_hosts.is_empty() && (clouds.is_empty() || !whole_fleet) {
        let hosts = engine::plan_all(fleet.clone(), names, opts, progress, pool).await;
        return FleetPlan {
            cloud: cloud::plan::costs_only(&fleet),
            fleet,
            hosts,
            new_servers: vec![],
        };
    }
    let observed = cloud::observe(clouds).await;
    let with_addresses = match &observed {
        Ok(obs) => with_cloud_addresses(&fleet, obs),
        Err(_) => (*fleet).clone(),
    };
    let mut early: Vec<HostResult> = Vec::new();
    let mut reachable = Vec::new();
    let mut new_servers = Vec::new();
    let cloud_plan = match &observed {
        Ok(obs) => {
            let desired = cloud::desired::servers(&fleet);
            let scope = (!whole_fleet).then_some(names.as_slice());
            Some(cloud::plan::plan(&fleet, &desired, obs, scope, cloud_opts))
        }
        Err(_) => None,
    };
    for name in &names {
        let host = fleet.host(name).expect("selected host exists");
        if !is_cloud(host.provider) {
            reachable.push(name.clone());
            continue;
        }
        if let Some((_, e)) = clouds.missing.iter().find(|(k, _)| *k == host.provider) {
            let mut r = HostResult::new(name, "-");
            r.fail(engine::HostError::Cloud, e.to_string());
            early.push(r);
            continue;
        }
        let obs = match &observed {
            Ok(o) => o,
            Err(e) => {
                let mut r = HostResult::new(name, "-");
                r.fail(
                    engine::HostError::Cloud,
                    format!("cannot see the server: {e}"),
                );
                early.push(r);
                continue;
            }
        };
        let change = cloud_plan.as_ref().and_then(|p| p.change(name));
        let server = obs
            .server(host.provider, name)
            .filter(|s| s.owned_by(&fleet.name));
        if change.is_some_and(|c| c.new_server()) {
            new_servers.push(name.clone());
            // A copy (a Lightsail resize) holds what the old server holds:
            // planned against that one, applied to the copy once it runs.
            if !change.is_some_and(|c| c.action == CloudAction::Resize) {
                early.push(preview(&fleet, name, &opts));
                continue;
            }
        }
        let Some(server) = server else {
            // A name clash with a server tidekeeper does not manage (in the cloud plan's errors).
            let mut r = HostResult::new(name, "-");
            r.skipped = Some("its server is not managed by tidekeeper (see the cloud plan)".into());
            early.push(r);
            continue;
        };
        match (&server.state, &server.address) {
            (PowerState::Running, Some(_)) => reachable.push(name.clone()),
            (state, _) => {
                let mut r = HostResult::new(name, server.address.as_deref().unwrap_or("-"));
                r.skipped = Some(why_not_running(state));
                early.push(r);
            }
        }
    }
    let fleet = Arc::new(with_addresses);
    let mut planned = engine::plan_all(fleet.clone(), reachable, opts, progress, pool).await;
    planned.extend(early);
    // Back in the order the hosts were asked for.
    planned.sort_by_key(|p| names.iter().position(|n| *n == p.host));
    let mut cloud = cloud_plan;
    if let Err(e) = &observed {
        cloud = Some(CloudPlan {
            unavailable: Some(format!("cannot list the cloud servers: {e}")),
            ..Default::default()
        });
    }
    FleetPlan {
        fleet,
        cloud,
        hosts: planned,
        new_servers,
    }
}

/// Apply a plan: servers first (deletes last), the planned hosts, then the
/// hosts of new servers, configured over SSH with their generated host keys.
pub async fn apply(
    plan: FleetPlan,
    pool: &Pool,
    opts: Arc<Options>,
    clouds: &Clouds,
    progress: Progress,
) -> Applied {
    let FleetPlan {
        fleet,
        cloud,
        hosts,
        new_servers,
    } = plan;
    let say = {
        let progress = progress.clone();
        move |host: &str, message: &str| {
            progress(Event::Server {
                host: host.to_string(),
                message: message.to_string(),
            })
        }
    };
    // A host copied to a new server (a Lightsail resize) was planned over a
    // connection to the old one, which the copy deletes.
    pool.close(new_servers.clone()).await;
    let mut outcomes = Vec::new();
    let (deletes, rest): (Vec<_>, Vec<_>) = cloud
        .as_ref()
        .map(|c| c.changes.clone())
        .unwrap_or_default()
        .into_iter()
        .partition(|c| c.action == CloudAction::Delete);
    let login_keys = if new_servers.is_empty() {
        vec![]
    } else {
        cloud::hostkey::login_keys(
            opts.ssh_key
                .as_deref()
                .or(fleet.settings.ssh.key.as_deref()),
        )
        .await
    };
    let (gone_networks, networks): (Vec<_>, Vec<_>) = cloud
        .as_ref()
        .map(|c| c.networks.clone())
        .unwrap_or_default()
        .into_iter()
        .partition(|n| n.action == CloudAction::Delete);
    let fleet_name = fleet.name.clone();
    if !rest.is_empty() || !networks.is_empty() {
        let first = CloudPlan {
            fleet: fleet_name.clone(),
            changes: rest,
            networks,
            ..Default::default()
        };
        outcomes
            .extend(cloud::apply::apply(&first, clouds, &login_keys, opts.parallel, &say).await);
    }
    // The hosts planned over SSH.
    let (existing, previews): (Vec<HostResult>, Vec<HostResult>) = hosts
        .into_iter()
        .partition(|p| !new_servers.contains(&p.host));
    let mut results = engine::apply_all(existing, pool, opts.clone(), progress.clone()).await;
    // The new servers: their addresses and generated keys, then plan + apply.
    let mut fleet2 = (*fleet).clone();
    let mut ready = Vec::new();
    let mut behind = Vec::new();
    for p in previews {
        let name = p.host.clone();
        let made = outcomes
            .iter()
            .find(|o| o.host == name && o.what == "server");
        let mut r = p;
        r.plan = None;
        match made {
            Some(CloudOutcome {
                error: None,
                server: Some(s),
                ..
            }) => {
                let h = fleet2
                    .hosts
                    .iter_mut()
                    .find(|h| h.name == name)
                    .expect("host exists");
                h.address = s.address.clone();
                h.private_address = s.private_address.clone().or(h.private_address.take());
                h.cloud_host_key = s.labels.get(HOST_KEY).cloned();
                let port = h.ssh.port;
                let addr = h.address.clone().unwrap_or_default();
                say(&name, "waiting for SSH…");
                // Behind a jump host, only the jump host can see the port:
                // connecting (with its retries) is the wait.
                if h.ssh.via.is_some() {
                    behind.push((name, r));
                    continue;
                }
                match cloud::apply::wait_for_port(&addr, port, SSH_WAIT).await {
                    Ok(()) => ready.push(name),
                    Err(e) => {
                        r.fail(engine::HostError::Unreachable, e);
                        results.push(r);
                    }
                }
            }
            Some(o) => {
                r.fail(
                    engine::HostError::Cloud,
                    format!(
                        "the server was not created: {}",
                        o.error.as_deref().unwrap_or("unknown error")
                    ),
                );
                results.push(r);
            }
            None => {
                r.fail(engine::HostError::Cloud, "the server was not created");
                results.push(r);
            }
        }
    }
    // Servers behind a jump host: only a connection through it can tell
    // when their sshd answers.
    for (name, mut r) in behind {
        let host = fleet2.host(&name).expect("host exists");
        let start = std::time::Instant::now();
        loop {
            match engine::connect(&fleet2, host, &opts).await {
                Ok(c) => {
                    c.close().await;
                    ready.push(name);
                    break;
                }
                // A wrong key or a refused login does not go away by waiting.
                Err(e) if start.elapsed() > SSH_WAIT || !settling(&e) => {
                    r.fail(engine::HostError::Unreachable, e.to_string());
                    results.push(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }
    if !ready.is_empty() {
        // The new servers' addresses, now known, reach their templates.
        let fleet2 = Arc::new(rerender(fleet2));
        let planned = engine::plan_all(fleet2, ready, opts.clone(), progress.clone(), pool).await;
        results.extend(engine::apply_all(planned, pool, opts.clone(), progress.clone()).await);
    }
    if !deletes.is_empty() || !gone_networks.is_empty() {
        let last = CloudPlan {
            fleet: fleet_name,
            changes: deletes,
            networks: gone_networks,
            ..Default::default()
        };
        outcomes.extend(cloud::apply::apply(&last, clouds, &login_keys, opts.parallel, &say).await);
    }
    let order: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    results.sort_by_key(|r| order.iter().position(|n| *n == r.host));
    Applied {
        cloud: outcomes,
        hosts: results,
    }
}

/// Close the connections of a plan that is not applied.
pub async fn finish(plan: FleetPlan, pool: Pool) -> Vec<HostResult> {
    pool.close(plan.hosts.iter().map(|h| h.host.clone()).collect())
        .await;
    plan.hosts
}

/// The plan as people read it: servers (with costs), hosts, the fleet's
/// monthly cost, and the summary line.
pub fn text(cloud: Option<&CloudPlan>, results: &[&HostResult], color: bool) -> String {
    let mut s = cloud
        .map(|c| cloud::plan::text(c, color))
        .unwrap_or_default();
    s.push_str(&engine::render::hosts_text(results, color));
    if let Some(c) = cloud {
        s.push_str(&cloud::plan::cost_summary(&c.cost));
    }
    s.push_str(&engine::render::summary_line(&totals(cloud, results)));
    s
}

pub fn totals(cloud: Option<&CloudPlan>, results: &[&HostResult]) -> engine::render::Totals {
    engine::render::with_cloud(engine::render::totals(results), cloud)
}

/// The plan as JSON: `hosts`, `cloud` (changes and monthly cost), `summary`.
pub fn json(cloud: Option<&CloudPlan>, results: &[&HostResult]) -> serde_json::Value {
    let mut doc = engine::render::json(results);
    doc["cloud"] = serde_json::to_value(cloud).unwrap_or_default();
    doc["summary"] = serde_json::to_value(totals(cloud, results)).unwrap_or_default();
    doc
}

/// What the cloud stage did, a line per server.
pub fn cloud_summary(outcomes: &[CloudOutcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        let line = match &o.error {
            None => format!(
                "{:<16} ok      {} {} ({:.1}s)",
                o.host,
                o.what,
                o.action.word(),
                o.seconds
            ),
            Some(e) => format!("{:<16} FAILED  {} {}: {e}", o.host, o.what, o.action.word()),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// A proposal (an untrusted commit) planned under its trusted base.
pub struct ProposalPlan {
    pub plan: FleetPlan,
    pub verdict: crate::policy::Verdict,
    /// What of the proposal takes effect only after merge.
    pub after_merge: Vec<String>,
}

/// Plan `proposal` read-only within what `base` (the last good commit of the
/// followed branch) manages: [`crate::proposal::confine`] decides what may be
/// contacted and read; nothing of the proposal runs anywhere. `names`: the
/// hosts to plan (None: every host of the proposal).
pub async fn plan_proposal(
    base: &Fleet,
    base_policies: &[(String, String)],
    proposal: Fleet,
    proposal_policies: &[(String, String)],
    names: Option<Vec<String>>,
    opts: Options,
    seen: Option<Result<cloud::Observed, String>>,
) -> ProposalPlan {
    let confined = crate::proposal::confine(base, base_policies, proposal, proposal_policies);
    let fleet = Arc::new(confined.fleet);
    let whole = names.is_none();
    let names = names.unwrap_or_else(|| {
        fleet
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .collect::<Vec<_>>()
    });
    let opts = Options {
        redactions: base.redactions.clone(),
        ..opts
    };
    let mut clouds = Clouds::from_env(&fleet);
    // A worker has no cloud credential: the clouds as the daemon saw them,
    // or why the daemon could not see them.
    match seen {
        Some(Ok(seen)) => {
            clouds.seen = Some(seen);
            clouds.missing.clear();
        }
        Some(Err(why)) => {
            for (_, e) in clouds.missing.iter_mut() {
                *e = cloud::CloudError::Refused(format!(
                    "the daemon could not see the clouds: {why}"
                ));
            }
        }
        None => {}
    }
    let quiet: Progress = Arc::new(|_| {});
    // A proposal is never applied: its connections close with its plan.
    let pool = Pool::new();
    let plan = plan(
        fleet.clone(),
        names,
        whole,
        Arc::new(opts),
        &clouds,
        Default::default(),
        quiet,
        &pool,
    )
    .await;
    pool.close(plan.hosts.iter().map(|h| h.host.clone()).collect())
        .await;
    let Gate {
        mut verdict,
        refusals,
    } = plan.gate(&confined.policies);
    // A destroy without permission fails the proposal like a denial.
    verdict.deny.extend(refusals);
    if !confined.proposed_policies.is_empty() {
        let results = plan.results();
        verdict.proposed = Some(Box::new(crate::policy::judge_proposed(
            &plan.fleet,
            &results,
            plan.cloud.as_ref(),
            &confined.proposed_policies,
            &confined.policies,
        )));
    }
    ProposalPlan {
        plan,
        verdict,
        after_merge: confined.after_merge,
    }
}

/// What a plan would do, one line per change (`host action kind id`), in a
/// stable order, and its digest: what a reviewer approved on a pull request
/// and what the daemon compares when the merge arrives. Timings, addresses
/// and notes are left out: only what would change counts.
pub fn plan_digest(cloud: Option<&CloudPlan>, results: &[&HostResult]) -> (String, Vec<String>) {
    let mut lines = Vec::new();
    if let Some(c) = cloud {
        for ch in &c.changes {
            lines.push(format!("{} server {}", ch.host, ch.action.word()));
        }
    }
    for r in results {
        if let Some(p) = &r.plan {
            for c in &p.changes {
                lines.push(format!(
                    "{} {} {} {}",
                    r.host,
                    c.action.symbol(),
                    c.kind,
                    c.id
                ));
            }
            for h in &p.handlers {
                lines.push(format!("{} handler {}", r.host, h.name));
            }
        }
        if r.error.is_some() {
            lines.push(format!("{} not planned", r.host));
        }
    }
    lines.sort();
    let hex = crate::digest::sha256_hex(lines.join("\n").as_bytes())[..16].to_string();
    (hex, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use crate::transport::TransportError as T;

    #[test]
    fn a_new_server_behind_a_jump_host_is_waited_for_only_while_it_may_be_booting() {
        let unreachable = EngineError::Transport(T::Unreachable {
            addr: "10.0.0.3:22 via 10.213.0.2:22".into(),
            reason: "connection refused".into(),
        });
        assert!(settling(&unreachable));
        let mismatch = EngineError::Transport(T::HostKeyMismatch {
            addr: "10.0.0.3:22".into(),
            offered: "a".into(),
            pinned: "b".into(),
        });
        assert!(!settling(&mismatch), "a wrong key is refused at once");
        let refused = EngineError::Transport(T::AuthFailed {
            user: "root".into(),
            addr: "10.0.0.3:22".into(),
            reason: "no".into(),
        });
        assert!(!settling(&refused));
    }

    #[test]
    fn addresses_a_provider_assigned_reach_templates_and_nothing_else_is_read_again() {
        use crate::model::desired::{Resource, Trust};
        let mut t = crate::source::ConfigTree::default();
        for (p, text) in [
            (
                "tidekeeper.yaml",
                "fleet: acme\nproviders:\n  hetzner: {}\n",
            ),
            (
                "hosts/web.yaml",
                "provider: hetzner\nserver: {type: cpx11, image: debian-12, location: fsn1}\nroles: [r]\n",
            ),
            (
                "roles/r.yaml",
                "files:\n  - {path: /etc/peers, template: peers.j2}\n",
            ),
            (
                "templates/peers.j2",
                "{{ host.address }} {{ hosts.web.address }}\n",
            ),
        ] {
            t.insert_file(p.to_string(), text.as_bytes().to_vec());
        }
        let content = |f: &Fleet| match &f.hosts[0].resources[0] {
            Resource::File(r) => String::from_utf8(r.content.bytes.clone()).unwrap(),
            other => panic!("{other:?}"),
        };
        let mut fleet = crate::model::load(&t).unwrap();
        assert_eq!(content(&fleet), "None None\n", "not known while reading");
        // A caller's changes (a proposal's trust) are not read again.
        fleet.hosts[0].trust = Trust::AfterMerge("moved".into());
        fleet.hosts[0].address = Some("203.0.113.5".into());
        let fleet = rerender(fleet);
        assert_eq!(content(&fleet), "203.0.113.5 203.0.113.5\n");
        assert!(matches!(fleet.hosts[0].trust, Trust::AfterMerge(_)));
        // Nothing new: not read again.
        let again = crate::model::reload_with_addresses(
            &fleet,
            &fleet.source.as_ref().unwrap().known.clone(),
        );
        assert!(again.is_none());
    }
}
