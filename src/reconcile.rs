//! A whole reconcile: the cloud stage, then the hosts. This module owns
//! their order and what passes between them (the cloud stage's address book,
//! the gate every plan passes), the plan's text, JSON and digest, and the
//! planning of proposals under their base.
//!
//! Plan: list the providers' servers (one listing per provider), plan the
//! servers (with costs), render the fleet with the address book of the
//! cloud hosts whose servers run (addresses, generated host keys), and plan
//! every reachable host through the host engine. A host whose server is still to be created is planned
//! against an empty machine, so the plan shows what it will get.
//!
//! Apply: create, update, resize and replace servers; apply the hosts that
//! were planned; configure the new servers in the same run (wait for SSH with
//! the generated host key, plan, apply); replace the host keys cloud-init
//! installed with keys made on the servers ([`rekey`]); delete servers last.

mod rekey;

use std::sync::Arc;
use std::time::Duration;

use crate::cloud::apply::CloudOutcome;
use crate::cloud::plan::{CloudAction, CloudPlan, PlanOptions as CloudOptions};
use crate::cloud::{self, Clouds, HOST_KEY, PowerState};
use crate::engine::{self, Event, HostResult, Options, Pool, Progress};
use crate::model::desired::{AddressBook, Addresses, Fleet, ProviderKind};

/// How long a new server may take from "running" to answering SSH.
const SSH_WAIT: Duration = Duration::from_secs(300);
/// How long a new or started server may refuse a login user other than
/// root while it boots (systemd keeps /run/nologin until its user sessions may start,
/// which on a slow or busy machine comes as late as SSH itself may).
const BOOT_LOGIN_WAIT: Duration = SSH_WAIT;

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

/// Could this error go away while a new server is still booting?
fn settling(e: &engine::EngineError) -> bool {
    use crate::transport::TransportError as T;
    matches!(
        e,
        engine::EngineError::Transport(T::Unreachable { .. } | T::Timeout { .. } | T::Lost { .. })
    )
}

/// The fleet with the address and generated host key of every cloud host
/// whose server (created by tidekeeper for this fleet) runs, its templates
/// rendered with them.
pub fn with_cloud_addresses(fleet: &Fleet, observed: &cloud::Observed) -> Fleet {
    crate::model::render_with(fleet, &cloud::address_book(fleet, observed))
}

fn is_cloud(p: ProviderKind) -> bool {
    matches!(
        p,
        ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Ec2
    )
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
    let no_cloud_host = !names
        .iter()
        .any(|n| fleet.host(n).is_some_and(|h| is_cloud(h.provider)));
    if no_cloud_host && (clouds.is_empty() || !whole_fleet) {
        let hosts = engine::plan_all(fleet.clone(), names, opts, progress, pool).await;
        return FleetPlan {
            cloud: cloud::plan::costs_only(&fleet),
            fleet,
            hosts,
            new_servers: vec![],
        };
    }
    let observed = cloud::observe(clouds).await;
    let (with_addresses, cloud_plan) = match &observed {
        Ok(obs) => {
            let desired = cloud::desired::servers(&fleet);
            let scope = (!whole_fleet).then_some(names.as_slice());
            let plan = cloud::plan::plan(&fleet, &desired, obs, scope, cloud_opts);
            (with_cloud_addresses(&fleet, obs), Some(plan))
        }
        Err(e) => {
            let unavailable = CloudPlan {
                unavailable: Some(format!("cannot list the cloud servers: {e}")),
                ..Default::default()
            };
            ((*fleet).clone(), Some(unavailable))
        }
    };
    let seen = Seen {
        fleet: &fleet,
        clouds,
        observed: observed.as_ref().map_err(|e| e.to_string()),
        plan: cloud_plan.as_ref(),
        opts: &opts,
    };
    let mut reachable = Vec::new();
    let mut early: Vec<HostResult> = Vec::new();
    let mut new_servers = Vec::new();
    for name in &names {
        match seen.place(name) {
            Place::Reachable => reachable.push(name.clone()),
            Place::Early(r) => early.push(*r),
            Place::NewServer(r) => {
                new_servers.push(name.clone());
                match r {
                    Some(r) => early.push(*r),
                    None => reachable.push(name.clone()),
                }
            }
        }
    }
    let fleet = Arc::new(with_addresses);
    let mut planned = engine::plan_all(fleet.clone(), reachable, opts, progress, pool).await;
    planned.extend(early);
    // Back in the order the hosts were asked for.
    planned.sort_by_key(|p| names.iter().position(|n| *n == p.host));
    FleetPlan {
        fleet,
        cloud: cloud_plan,
        hosts: planned,
        new_servers,
    }
}

/// What planning a host learns from the cloud stage.
struct Seen<'a> {
    fleet: &'a Fleet,
    clouds: &'a Clouds,
    observed: Result<&'a cloud::Observed, String>,
    plan: Option<&'a CloudPlan>,
    opts: &'a Options,
}

/// How a host is planned.
enum Place {
    /// Over SSH, where it runs.
    Reachable,
    /// Not over SSH: why, as its result.
    Early(Box<HostResult>),
    /// Its server is created (or replaced) by this plan: planned against
    /// an empty machine (the result), or over SSH (a copy holds what the
    /// old server holds).
    NewServer(Option<Box<HostResult>>),
}

impl Seen<'_> {
    fn place(&self, name: &str) -> Place {
        let host = self.fleet.host(name).expect("selected host exists");
        if !is_cloud(host.provider) {
            return Place::Reachable;
        }
        let failed = |why: String| {
            let mut r = HostResult::new(name, "-");
            r.fail(engine::HostError::Cloud, why);
            Place::Early(Box::new(r))
        };
        let missing = self
            .clouds
            .missing
            .iter()
            .find(|(k, _)| *k == host.provider);
        if let Some((_, e)) = missing {
            return failed(e.to_string());
        }
        let obs = match &self.observed {
            Ok(o) => o,
            Err(e) => return failed(format!("cannot see the server: {e}")),
        };
        let change = self.plan.and_then(|p| p.change(name));
        if change.is_some_and(|c| c.new_server()) {
            // A copy (a Lightsail resize) holds what the old server holds:
            // planned against that one, applied to the copy once it runs.
            if !change.is_some_and(|c| c.action == CloudAction::Resize) {
                return Place::NewServer(Some(Box::new(preview(self.fleet, name, self.opts))));
            }
            return Place::NewServer(match self.running(obs, host.provider, name) {
                Place::Early(r) => Some(r),
                _ => None,
            });
        }
        self.running(obs, host.provider, name)
    }

    /// Reachable when its server runs with an address; why not otherwise.
    fn running(&self, obs: &cloud::Observed, provider: ProviderKind, name: &str) -> Place {
        let server = obs
            .server(provider, name)
            .filter(|s| s.owned_by(&self.fleet.name));
        let Some(server) = server else {
            // A name clash with a server tidekeeper does not manage (in the cloud plan's errors).
            let mut r = HostResult::new(name, "-");
            r.skipped = Some("its server is not managed by tidekeeper (see the cloud plan)".into());
            return Place::Early(Box::new(r));
        };
        match (&server.state, &server.address) {
            (PowerState::Running, Some(_)) => Place::Reachable,
            (state, _) => {
                let mut r = HostResult::new(name, server.address.as_deref().unwrap_or("-"));
                r.skipped = Some(why_not_running(state));
                Place::Early(Box::new(r))
            }
        }
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
    let (first, last) = cloud
        .as_ref()
        .map(|c| in_order(&fleet.name, c))
        .unwrap_or_default();
    let login_keys = if new_servers.is_empty() {
        vec![]
    } else {
        let key = opts.ssh_key.as_deref();
        cloud::hostkey::login_keys(key.or(fleet.settings.ssh.key.as_deref())).await
    };
    let mut outcomes = Vec::new();
    if let Some(first) = &first {
        outcomes.extend(cloud::apply::apply(first, clouds, &login_keys, opts.parallel, &say).await);
    }
    // The hosts planned over SSH.
    let (existing, previews): (Vec<HostResult>, Vec<HostResult>) = hosts
        .into_iter()
        .partition(|p| !new_servers.contains(&p.host));
    let mut results = engine::apply_all(existing, pool, opts.clone(), progress.clone()).await;
    let new = NewServers {
        fleet: &fleet,
        pool,
        opts: &opts,
        progress: &progress,
        say: &say,
    };
    results.extend(new.configure(previews, &outcomes).await);
    // Host keys that came in user data are replaced by keys made on the servers.
    if let Some(first) = &first {
        let due = rekey::due(first, &outcomes, &results);
        let rotated = rekey::rotate_all(due, &fleet, clouds, &opts, &mut results, &outcomes).await;
        outcomes.extend(rotated);
    }
    if let Some(last) = last {
        outcomes.extend(cloud::apply::apply(&last, clouds, &login_keys, opts.parallel, &say).await);
    }
    let order: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    results.sort_by_key(|r| order.iter().position(|n| *n == r.host));
    Applied {
        cloud: outcomes,
        hosts: results,
    }
}

/// A cloud plan in the order it is applied: everything but deletions
/// first, deletions (servers and networks) last, after the hosts. None
/// where a part has nothing to do.
fn in_order(fleet: &str, c: &CloudPlan) -> (Option<CloudPlan>, Option<CloudPlan>) {
    let (deletes, rest): (Vec<_>, Vec<_>) = c
        .changes
        .iter()
        .cloned()
        .partition(|c| c.action == CloudAction::Delete);
    let (gone_networks, networks): (Vec<_>, Vec<_>) = c
        .networks
        .iter()
        .cloned()
        .partition(|n| n.action == CloudAction::Delete);
    let part = |changes: Vec<_>, networks: Vec<_>| {
        (!changes.is_empty() || !networks.is_empty()).then(|| CloudPlan {
            fleet: fleet.to_string(),
            changes,
            networks,
            ..Default::default()
        })
    };
    (part(rest, networks), part(deletes, gone_networks))
}

/// Configuring the servers a plan created: their addresses and generated
/// keys from the cloud stage, a wait for SSH, then plan + apply.
struct NewServers<'a, S> {
    fleet: &'a Fleet,
    pool: &'a Pool,
    opts: &'a Arc<Options>,
    progress: &'a Progress,
    say: &'a S,
}

impl<S: Fn(&str, &str)> NewServers<'_, S> {
    /// The results of the hosts whose servers were to be created.
    async fn configure(
        &self,
        previews: Vec<HostResult>,
        outcomes: &[CloudOutcome],
    ) -> Vec<HostResult> {
        let mut results = Vec::new();
        let mut book = AddressBook::new();
        let mut waiting = Vec::new();
        for mut r in previews {
            r.plan = None;
            match outcomes
                .iter()
                .find(|o| o.host == r.host && o.what == "server")
            {
                Some(CloudOutcome {
                    error: None,
                    server: Some(s),
                    ..
                }) => {
                    let a = Addresses {
                        public: s.address.clone(),
                        private: s.private_address.clone(),
                        host_key: s.labels.get(HOST_KEY).cloned(),
                        host_key_rotated: s.labels.contains_key(cloud::HOST_KEY_ROTATED),
                    };
                    book.insert(r.host.clone(), a);
                    waiting.push(r);
                }
                made => {
                    let why = match made {
                        Some(o) => format!(
                            "the server was not created: {}",
                            o.error.as_deref().unwrap_or("unknown error")
                        ),
                        None => "the server was not created".into(),
                    };
                    r.fail(engine::HostError::Cloud, why);
                    results.push(r);
                }
            }
        }
        let mut fleet = self.fleet.clone();
        crate::model::assign_addresses(&mut fleet, &book);
        let mut ready = Vec::new();
        for mut r in waiting {
            match self.wait_for_ssh(&fleet, &r.host).await {
                Ok(()) => ready.push(r.host),
                Err(e) => {
                    r.fail(engine::HostError::Unreachable, e);
                    results.push(r);
                }
            }
        }
        if !ready.is_empty() {
            // The new servers' addresses, now known, reach their templates.
            let fleet = Arc::new(crate::model::render_with(&fleet, &book));
            let (opts, progress) = (self.opts.clone(), self.progress.clone());
            let planned = engine::plan_all(fleet, ready, opts.clone(), progress.clone(), self.pool);
            results.extend(engine::apply_all(planned.await, self.pool, opts, progress).await);
        }
        results
    }

    /// Wait until the new server of host `name` answers SSH.
    async fn wait_for_ssh(&self, fleet: &Fleet, name: &str) -> Result<(), String> {
        let host = fleet.host(name).expect("host exists");
        (self.say)(name, "waiting for SSH…");
        wait_for_login(fleet, host, self.opts, SSH_WAIT).await
    }
}

/// Wait until `host`, a server just created or started, takes a login: its
/// SSH port answers within `wait`, then a login goes through. While the
/// server may still be booting (at most `wait`, and [`BOOT_LOGIN_WAIT`] for
/// a refused login), failures that pass are retried; others fail at once.
/// A root login is not tried (unless behind a jump host, where connecting
/// is the only way to see the port).
pub(crate) async fn wait_for_login(
    fleet: &Fleet,
    host: &crate::model::desired::Host,
    opts: &Options,
    wait: Duration,
) -> Result<(), String> {
    // Behind a jump host, only the jump host can see the port:
    // connecting (with its retries) is the wait.
    if host.ssh.via.is_none() {
        let addr = host.address.clone().unwrap_or_default();
        cloud::apply::wait_for_port(&addr, host.ssh.port, wait).await?;
        if host.ssh.user == "root" {
            return Ok(());
        }
    }
    let settle = wait.min(BOOT_LOGIN_WAIT);
    let start = std::time::Instant::now();
    loop {
        match engine::connect(fleet, host, opts).await {
            Ok(c) => {
                c.close().await;
                return Ok(());
            }
            // A user other than root is turned away while the server
            // still boots (pam_nologin) — for a while, not for good.
            Err(engine::EngineError::Transport(crate::transport::TransportError::AuthFailed {
                ..
            })) if host.ssh.user != "root" && start.elapsed() < settle => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            // A wrong key or a refused login does not go away by waiting.
            Err(e) if start.elapsed() > settle || !settling(&e) => {
                return Err(format!(
                    "{e} (after {}s of trying to log in to the server as {})",
                    start.elapsed().as_secs(),
                    host.ssh.user
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
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

/// What an apply did, for `apply -o json`: each host's result (applied,
/// failed, unchanged) with the totals of the steps that reported success,
/// and each server's or network's outcome.
pub fn applied_json(done: &Applied) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = done
        .hosts
        .iter()
        .map(|r| {
            let status = match (&r.error, &r.done) {
                (Some(_), _) => "failed",
                (None, Some(_)) => "applied",
                (None, None) if r.skipped.is_some() => "skipped",
                (None, None) => "unchanged",
            };
            serde_json::json!({
                "host": r.host,
                "address": r.address,
                "status": status,
                "error": r.error,
                "skipped": r.skipped,
                "done": r.done,
                "seconds": r.elapsed.as_secs_f64(),
            })
        })
        .collect();
    serde_json::json!({
        "hosts": hosts,
        "cloud": done.cloud,
        "summary": engine::render::done_totals(&done.hosts),
    })
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

/// What a plan would do, one line per change (`host action kind id`, and
/// for a file its new content's sha256), in a stable order, and its digest:
/// what a reviewer approved on a pull request and what the daemon compares
/// when the merge arrives. Timings, addresses and notes are left out: only
/// what would change counts. Both sides count the same: a command with a
/// guard (whether it runs is the host's answer at apply time, never
/// evaluated for a proposal) and a secret file (never decrypted for a
/// proposal; its ciphertext is in the tree, which the merge must share
/// with the reviewed head) are left out.
pub fn plan_digest(cloud: Option<&CloudPlan>, results: &[&HostResult]) -> (String, Vec<String>) {
    let mut lines = Vec::new();
    if let Some(c) = cloud {
        for ch in &c.changes {
            lines.push(format!("{} server {}", ch.host, ch.action.word()));
        }
    }
    for r in results {
        if let Some(p) = &r.plan {
            for c in p.changes.iter().filter(|c| digested(c)) {
                lines.push(digest_line(&r.host, c));
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

/// Does a change count in the plan's digest? Not a guarded command, not a
/// secret file: see [`plan_digest`].
fn digested(c: &crate::engine::plan::Change) -> bool {
    use crate::engine::item::Item;
    if c.note.as_deref() == Some(crate::engine::confine::GUARD_NOT_RUN) {
        return false;
    }
    match &c.item {
        Some(Item::Command(cmd)) => {
            cmd.unless.is_none() && cmd.onlyif.is_none() && cmd.creates.is_none()
        }
        Some(Item::File(f)) => !f.content.sensitive,
        _ => true,
    }
}

/// One change in the digest: `host action kind id`, and a file's content.
fn digest_line(host: &str, c: &crate::engine::plan::Change) -> String {
    let line = format!("{host} {} {} {}", c.action.symbol(), c.kind, c.id);
    match &c.item {
        Some(crate::engine::item::Item::File(f)) if c.action != crate::change::Action::Delete => {
            let sha = crate::digest::sha256_hex(&f.content.bytes);
            format!("{line} content {}", &sha[..16])
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use crate::transport::TransportError as T;

    /// A host's result planning `changes`.
    fn planned(changes: Vec<engine::plan::Change>) -> HostResult {
        let mut r = HostResult::new("web1", "10.0.0.1");
        r.plan = Some(engine::plan::HostPlan::new("web1", changes));
        r
    }

    fn file_change(path: &str, text: &str, sensitive: bool) -> engine::plan::Change {
        use crate::change::{Action, ResourceKind};
        use crate::engine::item::{FileItem, Item};
        let mut c = engine::plan::Change::bare(ResourceKind::File, path, Action::Update);
        c.item = Some(Item::File(FileItem {
            path: path.into(),
            sha256: crate::digest::sha256_hex(text.as_bytes()),
            content: crate::model::desired::Content {
                bytes: text.as_bytes().to_vec(),
                sensitive,
            },
            mode: None,
            owner: None,
            group: None,
            validate: None,
            notify: vec![],
        }));
        c
    }

    fn command_change(guarded: bool) -> engine::plan::Change {
        use crate::change::{Action, ResourceKind};
        let mut c = engine::plan::Change::bare(ResourceKind::Command, "migrate", Action::Run);
        c.item = Some(crate::engine::item::Item::Command(
            crate::model::desired::CommandResource {
                name: "migrate".into(),
                run: "migrate".into(),
                creates: None,
                unless: guarded.then(|| "test -f /srv/done".into()),
                onlyif: None,
                timeout_secs: 60,
                notify: vec![],
                origin: Default::default(),
            },
        ));
        c
    }

    #[test]
    fn a_plan_digest_moves_with_what_a_file_will_contain() {
        let a = planned(vec![file_change("/etc/app.conf", "port = 1\n", false)]);
        let b = planned(vec![file_change("/etc/app.conf", "port = 2\n", false)]);
        let (da, la) = plan_digest(None, &[&a]);
        let (db, lb) = plan_digest(None, &[&b]);
        assert_ne!(da, db, "a template whose inputs moved changes the digest");
        assert!(
            la[0].starts_with("web1 ~ file /etc/app.conf content "),
            "{la:?}"
        );
        assert_ne!(la, lb);
        assert_eq!(plan_digest(None, &[&a]).0, da, "stable");
    }

    #[test]
    fn what_a_proposal_cannot_see_counts_the_same_on_both_sides() {
        // The proposal: a secret never decrypted (so no change), a guarded
        // command whose guard was not evaluated.
        let mut unevaluated = engine::plan::Change::bare(
            crate::change::ResourceKind::Command,
            "migrate",
            crate::change::Action::Run,
        );
        unevaluated.note = Some(crate::engine::confine::GUARD_NOT_RUN.into());
        let proposal = planned(vec![
            file_change("/etc/app.conf", "x\n", false),
            unevaluated,
        ]);
        // The merge: the secret decrypted and changed, the guard said run.
        let merge = planned(vec![
            file_change("/etc/app.conf", "x\n", false),
            file_change("/etc/secret", "s3cret", true),
            command_change(true),
        ]);
        assert_eq!(
            plan_digest(None, &[&proposal]),
            plan_digest(None, &[&merge])
        );
        // An unguarded command always runs: it counts.
        let runs = planned(vec![
            file_change("/etc/app.conf", "x\n", false),
            command_change(false),
        ]);
        assert_ne!(
            plan_digest(None, &[&proposal]).0,
            plan_digest(None, &[&runs]).0
        );
    }

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
    fn a_cloud_plan_is_applied_with_its_deletions_last_and_empty_parts_skipped() {
        use crate::cloud::plan::CloudChange;
        let change = |host: &str, action| CloudChange {
            host: host.into(),
            provider: ProviderKind::Hetzner,
            action,
            attrs: vec![],
            reason: None,
            cost_before: None,
            cost_after: None,
            allow_destroy: true,
            blocked: None,
            desired: None,
            observed: None,
        };
        let plan = CloudPlan {
            changes: vec![
                change("old", CloudAction::Delete),
                change("web", CloudAction::Create),
                change("db", CloudAction::Update),
            ],
            ..Default::default()
        };
        let (first, last) = in_order("acme", &plan);
        let hosts = |p: &CloudPlan| p.changes.iter().map(|c| c.host.clone()).collect::<Vec<_>>();
        assert_eq!(hosts(first.as_ref().unwrap()), ["web", "db"]);
        assert_eq!(hosts(last.as_ref().unwrap()), ["old"]);
        assert_eq!(last.unwrap().fleet, "acme");
        let creates_only = CloudPlan {
            changes: vec![change("web", CloudAction::Create)],
            ..Default::default()
        };
        assert!(in_order("acme", &creates_only).1.is_none());
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
        let fleet = crate::model::render_with(&fleet, &AddressBook::new());
        assert_eq!(content(&fleet), "203.0.113.5 203.0.113.5\n");
        assert!(matches!(fleet.hosts[0].trust, Trust::AfterMerge(_)));
        // Nothing new: not rendered again.
        let seen = fleet.source.as_ref().unwrap().book.clone();
        assert_eq!(
            seen.get("web").and_then(|a| a.public.as_deref()),
            Some("203.0.113.5")
        );
        let mut stale = fleet.clone();
        stale.hosts[0].resources.clear();
        let again = crate::model::render_with(&stale, &AddressBook::new());
        assert!(again.hosts[0].resources.is_empty(), "not rendered again");
    }
}
