//! `tidekeeper run`: the long-running reconciler, built like a controller.
//! Triggers (poll timer, webhook, file watch, drift timer, cron, retry,
//! proposals) only ask the [`scheduler`] for a keyed request ("look at the
//! head", "check drift", "run job X"); the scheduler de-duplicates them and
//! the loop takes what is due. Every reconcile is level-triggered: it
//! compares the whole desired state with what is there, so a missed trigger
//! is healed by the next. Per-host [`locks`] let a maintenance job run on
//! one host in the background while commits and drift checks go on with the
//! others; hosts that are busy or unreachable get the commit on a later pass
//! (with jittered backoff), not a quarantine.
//!
//! - [`scheduler`]: keyed requests on tokio time; backoff with jitter.
//! - [`locks`]: per-host locks shared by commits, drift checks and jobs.
//! - `jobs`: maintenance under the daemon; `proposals`: planning PR heads.
//! - [`mirror`]: the bare mirror; status branch and notes pushed with a lease.
//! - [`status`]: status, badges, metrics, the status page (pure).
//! - [`http`]: the HTTP server.

pub mod http;
mod jobs;
pub mod locks;
pub mod mirror;
mod proposals;
mod rollout;
pub mod scheduler;
pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{Instrument, error, info, info_span, warn};

use locks::HostLocks;
use scheduler::{Backoff, Request, Scheduler};

use crate::engine::{self, HostError, HostResult};
use crate::model::desired::{DriftMode, Fleet};
use crate::reconcile;
use crate::source::ConfigTree;
use mirror::Mirror;
use status::{FleetStatus, HostState, HostStatus, Invalid, Metrics, Quarantine};

#[derive(Debug, Clone)]
pub struct Config {
    /// The config repo: a path or URL git can fetch from.
    pub repo: String,
    pub branch: String,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Overrides the fleet's `intervals.poll`.
    pub poll: Option<Duration>,
    /// Overrides the fleet's `intervals.drift`.
    pub drift: Option<Duration>,
    pub webhook_secret: Option<String>,
    /// Bearer token for actions over HTTP (`POST /retry`).
    pub api_token: Option<String>,
    pub ssh_key: Option<String>,
    /// Watch a local repo's refs for instant feedback.
    pub watch: bool,
    /// Only these hosts (e.g. pull mode: each server runs a daemon for
    /// itself); empty: every host in the fleet.
    pub hosts: Vec<String>,
    /// Reaching the config repo over ssh:// or https://.
    pub git: mirror::Access,
    /// Refs of proposed changes to plan read-only (e.g. `refs/pull/*/head`).
    pub proposals: Vec<String>,
    /// A host rolls back a risky change unless access is proven within this time.
    pub rollback_after: Duration,
}

/// A commit's `policies/*.rego`, as (path, text).
type Policies = Arc<Vec<(String, String)>>;

/// State shared between the loop and the HTTP server.
pub struct Shared {
    pub status: Mutex<FleetStatus>,
    pub metrics: Mutex<Metrics>,
    /// Every trigger asks here; the runner takes what is due.
    pub scheduler: Arc<Scheduler>,
    pub retry: AtomicBool,
    pub ready: AtomicBool,
    pub webhook_secret: Option<Vec<u8>>,
    pub api_token: Option<Vec<u8>>,
    stale: Mutex<BTreeMap<&'static str, String>>,
}

impl Shared {
    /// "Look again" (a webhook, a file watch, a retry).
    pub fn poke(&self) {
        self.scheduler.now(Request::Head);
        self.metrics.lock().unwrap().queue = self.scheduler.len() as u64;
    }
    pub fn note_stale(&self, key: &'static str, why: String) {
        let mut s = self.stale.lock().unwrap();
        s.insert(key, why);
        self.status.lock().unwrap().stale = s.values().cloned().collect();
    }
    pub fn clear_stale(&self, key: &'static str) {
        let mut s = self.stale.lock().unwrap();
        if s.remove(key).is_some() {
            self.status.lock().unwrap().stale = s.values().cloned().collect();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Mirror(#[from] mirror::MirrorError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("state directory {path}: {reason}")]
    State { path: String, reason: String },
}

/// Diagnostics as `file:line:col` lines.
fn lines(d: &crate::model::Diagnostics) -> Vec<String> {
    d.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct Loop {
    cfg: Config,
    shared: Arc<Shared>,
    mirror: Arc<Mutex<Mirror>>,
    /// Last valid desired state, kept while newer commits are invalid.
    good: Option<(String, Arc<Fleet>, Policies)>,
    last_seen: Option<String>,
    last_fetch: Option<Instant>,
    fetch_failures: u32,
    shutdown: Arc<Notify>,
    /// The commit last applied only in part (hosts busy with a job, locked
    /// by another run, or unreachable): applied again on the next pass.
    incomplete: Option<String>,
    sched: Arc<Scheduler>,
    backoff: Backoff,
    locks: Arc<HostLocks>,
    /// Jobs running in the background, and where they report back.
    jobs_running: std::collections::BTreeSet<String>,
    job_done: tokio::sync::mpsc::UnboundedSender<jobs::JobDone>,
    job_rx: Option<tokio::sync::mpsc::UnboundedReceiver<jobs::JobDone>>,
    /// The suspension the status branch shows (pushed when it changes).
    reported_suspension: Option<status::Suspension>,
    /// Next due time of each maintenance job.
    due: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    /// Proposal ref → the head planned last (kept in the state directory).
    proposals: proposals::Record,
    /// One forge client for the daemon's life (it remembers which statuses
    /// it posted, so repeats are not sent), rebuilt when the settings change.
    forge: Option<(String, Arc<crate::forge::Forge>)>,
    /// A status push failed: the notes it carried (commit → text), pushed
    /// again with the status on the next poll.
    unpushed: Mutex<Option<BTreeMap<String, String>>>,
}

impl Loop {
    fn poll_interval(&self) -> Duration {
        self.cfg.poll.unwrap_or_else(|| {
            Duration::from_secs(
                self.good
                    .as_ref()
                    .map(|g| g.1.settings.poll_interval_secs)
                    .unwrap_or(60),
            )
        })
    }
    fn drift_interval(&self) -> Duration {
        self.cfg.drift.unwrap_or_else(|| {
            Duration::from_secs(
                self.good
                    .as_ref()
                    .map(|g| g.1.settings.drift_interval_secs)
                    .unwrap_or(600),
            )
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mirror) -> T + Send + 'static,
    ) -> T {
        let m = self.mirror.clone();
        tokio::task::spawn_blocking(move || f(&m.lock().unwrap()))
            .await
            .expect("git task")
    }

    /// Fetch; the branch head, or None (recorded as a failure) when the remote is unreachable.
    async fn fetch(&mut self) -> Option<String> {
        self.shared.metrics.lock().unwrap().fetches += 1;
        match self.blocking(|m| m.fetch()).await {
            Ok(oid) => {
                self.fetch_failures = 0;
                self.last_fetch = Some(Instant::now());
                self.shared.ready.store(true, Ordering::SeqCst);
                self.shared.clear_stale("fetch");
                let mut m = self.shared.metrics.lock().unwrap();
                m.last_sync_unix = Some(chrono::Utc::now().timestamp());
                self.shared.status.lock().unwrap().last_fetch_ok = Some(now());
                Some(oid.to_string())
            }
            Err(e) => {
                self.fetch_failures += 1;
                self.shared.metrics.lock().unwrap().fetch_failures += 1;
                warn!(error = %e, failures = self.fetch_failures, "fetch failed");
                let stale_after = self.poll_interval() * 3;
                let stale = self.last_fetch.is_none_or(|t| t.elapsed() >= stale_after);
                if stale || self.fetch_failures >= 3 {
                    self.shared.note_stale(
                        "fetch",
                        format!(
                            "no successful fetch of {} for {} attempts: {e}",
                            self.cfg.repo, self.fetch_failures
                        ),
                    );
                }
                None
            }
        }
    }

    /// Write the status branch (and `note` on its commit), together with
    /// whatever an earlier failed push left unsent.
    async fn push_status(&self, note: Option<(String, String)>) {
        let (files, applied) = {
            let st = self.shared.status.lock().unwrap();
            (st.files(), st.applied_commit.clone())
        };
        let noted = note.as_ref().map(|n| n.0.clone());
        let mut notes = self.unpushed.lock().unwrap().take().unwrap_or_default();
        let noted = noted.or_else(|| notes.keys().next().cloned());
        if let Some((commit, text)) = note {
            notes.insert(commit, text); // the newest note on a commit wins
        }
        let commit_msg = format!("tidekeeper status at {}", now());
        let res = self
            .blocking(
                move |m| -> Result<(), (mirror::MirrorError, BTreeMap<String, String>)> {
                    if let Err(e) = m.push_status(&files, &commit_msg) {
                        return Err((e, notes));
                    }
                    let mut notes = notes.into_iter();
                    while let Some((commit, text)) = notes.next() {
                        let pushed = git2::Oid::from_str(&commit)
                            .map_err(mirror::MirrorError::Git)
                            .and_then(|oid| m.push_note(oid, &text));
                        if let Err(e) = pushed {
                            let mut left: BTreeMap<_, _> = notes.collect();
                            left.insert(commit, text);
                            return Err((e, left));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        match res {
            Ok(()) => {
                self.shared.clear_stale("push");
                let mut st = self.shared.status.lock().unwrap();
                let noted = noted.or_else(|| st.written_back.take().and_then(|w| w.noted_commit));
                st.written_back = Some(status::WrittenBack {
                    at: now(),
                    applied_commit: applied,
                    noted_commit: noted,
                });
            }
            Err((e, left)) => {
                error!(error = %e, "status push failed; trying again on the next poll");
                *self.unpushed.lock().unwrap() = Some(left);
                self.shared.metrics.lock().unwrap().status_push_failures += 1;
                self.shared
                    .note_stale("push", format!("status push failed: {e}"));
            }
        }
    }

    /// Load a commit's config: the fleet and its `policies/*.rego`, or its
    /// errors as `file:line:col` lines. The tree is read from git once.
    async fn load(&self, commit: &str) -> Result<(Fleet, Policies), Vec<String>> {
        let path = self.mirror.lock().unwrap().path.clone();
        let c = commit.to_string();
        tokio::task::spawn_blocking(move || {
            let tree = ConfigTree::from_git(&path, &c).map_err(|e| vec![e.to_string()])?;
            let lines = |d: crate::model::Diagnostics| lines(&d);
            let fleet = crate::model::load(&tree).map_err(lines)?;
            // Secrets are decrypted in memory when an identity is configured.
            let fleet = match crate::secrets::identity(&fleet.settings) {
                Ok(None) => fleet,
                Ok(Some(id)) => {
                    crate::model::load_with_identity(&tree, Some(&id)).map_err(lines)?
                }
                Err(e) => return Err(vec![e.to_string()]),
            };
            Ok((fleet, Arc::new(tree.policies())))
        })
        .await
        .expect("load task")
    }

    /// The hosts this daemon reconciles (`--host`, or all).
    fn selected(&self, fleet: &Fleet) -> Vec<String> {
        fleet
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| self.cfg.hosts.is_empty() || self.cfg.hosts.contains(n))
            .collect()
    }

    fn options(&self, fleet: &Fleet) -> engine::Options {
        engine::Options {
            parallel: fleet.settings.parallelism.max(1) as usize,
            ssh_key: self.cfg.ssh_key.clone(),
            rollback_deadline: self.cfg.rollback_after,
            redactions: fleet.redactions.clone(),
            ..Default::default()
        }
    }

    /// Plan (and apply, unless the policies deny the plan) the servers and
    /// hosts; update host statuses. `Err` carries the policies' denials and
    /// the cloud plan's refusals (a destroy without permission).
    async fn reconcile(
        &mut self,
        commit: &str,
        fleet: Arc<Fleet>,
        policies: &Policies,
        apply: bool,
        review: Option<&Review>,
    ) -> Result<Reconciled, Refused> {
        let started = Instant::now();
        let opts = Arc::new(self.options(&fleet));
        // The hosts free now; those a job (or another reconcile) holds wait
        // for the next pass, and their status says for what.
        let who = if apply {
            format!("commit {}", &commit[..commit.len().min(12)])
        } else {
            "a drift check".to_string()
        };
        let (held, busy) = self.locks.try_take(&self.selected(&fleet), &who);
        let names = held.hosts();
        let quiet: engine::Progress = Arc::new(|_| {});
        let clouds = crate::cloud::Clouds::from_env(&fleet);
        let plan = reconcile::plan(
            fleet.clone(),
            names,
            self.cfg.hosts.is_empty() && busy.is_empty(),
            opts.clone(),
            &clouds,
            Default::default(),
            quiet.clone(),
        )
        .await;
        if let Some(c) = &plan.cloud {
            self.shared.status.lock().unwrap().monthly_cost = c
                .cost
                .iter()
                .map(|(k, v)| (k.to_string(), (v.proposed * 100.0).round() / 100.0))
                .collect();
        }
        let new_servers = plan.new_servers.clone();
        if apply && plan.has_changes() {
            let verdict =
                crate::policy::judge(&plan.fleet, &plan.results(), plan.cloud.as_ref(), policies);
            let refusals = plan.refusals();
            if verdict.blocks() || !refusals.is_empty() {
                reconcile::finish(plan).await;
                let mut why: Vec<String> = verdict
                    .deny
                    .iter()
                    .map(|d| format!("policy denies: {d}"))
                    .collect();
                why.extend(verdict.errors.iter().map(|e| format!("policy error: {e}")));
                why.extend(refusals.into_iter().map(|r| format!("refused: {r}")));
                return Err(Refused::Denied(
                    why.into_iter().map(|w| fleet.redact(&w)).collect(),
                ));
            }
        }
        // A merge of a reviewed proposal: is this still the reviewed plan?
        let mut review_note = None;
        if apply && let Some(r) = review {
            let (digest, lines) = reconcile::plan_digest(plan.cloud.as_ref(), &plan.results());
            let seen = &r.reviewed;
            if digest == seen.digest {
                review_note = Some(format!(
                    "the plan is the one reviewed on {} (digest {digest})",
                    r.proposal
                ));
            } else {
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
                let text = fleet.redact(&format!(
                    "the plan differs from the one reviewed on {} (reviewed {}, now {digest}; a host drifted or changed since review):\n{}",
                    r.proposal,
                    seen.digest,
                    diff.join("\n")
                ));
                if fleet.settings.require_reviewed_plan && !r.accept {
                    reconcile::finish(plan).await;
                    return Err(Refused::Held(text));
                }
                review_note = Some(format!(
                    "{text}\n(applied: apply.require_reviewed_plan is {})",
                    if r.accept {
                        "overridden by retry"
                    } else {
                        "off"
                    }
                ));
            }
        }
        let cloud_errors: Vec<String> = plan
            .cloud
            .as_ref()
            .map(|c| c.errors.clone())
            .unwrap_or_default();
        let rollout = fleet
            .settings
            .rollout
            .clone()
            .filter(|_| apply && plan.hosts.len() > 1);
        let (results, outcomes) = if let Some(r) = rollout {
            self.roll_out(commit, plan, &r, opts, &clouds).await
        } else if apply {
            let done = reconcile::apply(plan, opts, &clouds, quiet).await;
            (done.hosts, done.cloud)
        } else {
            (reconcile::finish(plan).await, vec![])
        };
        let mut cloud_failures = cloud_errors;
        for o in &outcomes {
            match &o.error {
                Some(e) => {
                    warn!(host = %o.host, action = o.action.word(), error = %e, "server change failed");
                    cloud_failures.push(format!("{} server: {e}", o.host));
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
            let d = metrics.durations.entry(r.host.clone()).or_default();
            d.0 += r.elapsed.as_secs_f64();
            d.1 += 1;
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
            }
            info!(host = %host, %holder, "host busy; left for the next pass");
            st.hosts.insert(host.clone(), h.clone());
            out.push(h);
        }
        drop(held);
        // Hosts that left the config leave the status too.
        st.hosts.retain(|name, _| {
            fleet.host(name).is_some()
                && (self.cfg.hosts.is_empty() || self.cfg.hosts.contains(name))
        });
        st.generated_host_keys
            .retain(|name, _| fleet.host(name).is_some());
        st.last_reconcile = Some(now());
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconcile done"
        );
        Ok(Reconciled {
            hosts: out,
            cloud_failures,
            review: review_note,
        })
    }

    /// A merge held because its plan is no longer the reviewed one:
    /// quarantined until a newer commit, or `tidekeeper retry` accepts it.
    async fn hold_unreviewed(&mut self, commit: String, why: String) {
        warn!("{why}; held, nothing applied");
        self.shared.status.lock().unwrap().quarantined = Some(Quarantine {
            commit: commit.clone(),
            reason: format!("held: {}", why.lines().next().unwrap_or("")),
        });
        let note = format!(
            "tidekeeper: held {commit}; nothing applied\n\n{why}\n\n`tidekeeper retry` applies it as it plans now.\n"
        );
        self.push_status(Some((commit, note))).await;
    }

    /// A commit that is not applied (invalid config, or denied by the
    /// policies): reported in the status and in a note on the commit.
    async fn reject(&mut self, commit: String, why: &str, errors: Vec<String>) {
        warn!(errors = errors.len(), "{why} this commit; nothing applied");
        let note = format!(
            "tidekeeper: {why} {commit}; nothing applied\n\n{}\n",
            errors.join("\n")
        );
        self.shared.status.lock().unwrap().invalid = Some(Invalid {
            commit: commit.clone(),
            errors,
        });
        self.push_status(Some((commit, note))).await;
    }

    /// The forge client for `settings`.
    fn forge(
        &mut self,
        settings: &crate::model::desired::Forge,
    ) -> Result<Arc<crate::forge::Forge>, crate::forge::ForgeError> {
        let key = serde_json::to_string(settings).unwrap_or_default();
        if let Some((k, f)) = &self.forge
            && *k == key
        {
            return Ok(f.clone());
        }
        let f = Arc::new(crate::forge::Forge::remembering(
            settings,
            self.cfg.state_dir.join("forge-statuses.json"),
        )?);
        self.forge = Some((key, f.clone()));
        Ok(f)
    }

    /// Keys learned on first use are pinned from then on.
    fn pin_learned_keys(&self, fleet: &mut Fleet) {
        let learned = self.shared.status.lock().unwrap().learned_host_keys.clone();
        for line in learned {
            let mut parts = line.split_whitespace();
            if let (Some(h), Some(t), Some(k)) = (parts.next(), parts.next(), parts.next()) {
                fleet.known_hosts.push(crate::model::desired::KnownHost {
                    hosts: vec![h.to_string()],
                    key_type: t.to_string(),
                    key: k.to_string(),
                    line: 0,
                });
            }
        }
    }

    /// A new commit on the branch.
    async fn on_commit(&mut self, commit: String) {
        let span = info_span!("commit", commit = %&commit[..12]);
        async {
            let retry = self.shared.retry.swap(false, Ordering::SeqCst);
            {
                let st = self.shared.status.lock().unwrap();
                if !retry && st.quarantined.as_ref().is_some_and(|q| q.commit == commit) {
                    info!(
                        "commit is quarantined; waiting for a newer commit or `tidekeeper retry`"
                    );
                    return;
                }
            }
            let (fleet, policies) = match self.load(&commit).await {
                Err(errors) => return self.reject(commit, "invalid config at", errors).await,
                Ok((mut f, policies)) => {
                    self.pin_learned_keys(&mut f);
                    self.adopt_status_refs(&f).await;
                    (Arc::new(f), policies)
                }
            };
            let already = self.shared.status.lock().unwrap().applied_commit.as_deref()
                == Some(commit.as_str());
            {
                let mut st = self.shared.status.lock().unwrap();
                st.invalid = None;
                st.fleet = fleet.name.clone();
            }
            self.good = Some((commit.clone(), fleet.clone(), policies.clone()));
            self.reschedule(chrono::Utc::now());
            if already && !retry {
                info!("already applied (per the status branch); not applying again");
                return;
            }
            if let Some(s) = self.suspension(&commit, &fleet) {
                return self.hold(commit, fleet, &policies, s).await;
            }
            let started = Instant::now();
            info!("applying");
            let review = self
                .reviewed_for(&commit)
                .await
                .map(|(proposal, reviewed)| Review {
                    proposal,
                    reviewed,
                    accept: retry,
                });
            let Reconciled {
                hosts,
                cloud_failures,
                review,
            } = match self
                .reconcile(&commit, fleet.clone(), &policies, true, review.as_ref())
                .await
            {
                Ok(r) => r,
                Err(Refused::Denied(denied)) => {
                    return self.reject(commit, "the policies deny", denied).await;
                }
                Err(Refused::Held(why)) => return self.hold_unreviewed(commit, why).await,
            };
            // Hosts that could not be reached fail nothing: the commit is
            // applied to them on a later pass, with backoff. Other failures
            // need a human: the commit is quarantined.
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
            let waiting = hosts
                .iter()
                .filter(|h| h.error_kind.is_some_and(HostError::is_transient))
                .count();
            let ok = cloud_failures.is_empty() && failed.is_empty();
            self.incomplete = (ok && waiting + unreachable > 0).then(|| commit.clone());
            if self.incomplete.is_some() {
                let wait = if unreachable > 0 {
                    self.backoff.failed(&Request::Head, Duration::from_secs(300))
                } else {
                    Duration::from_secs(2)
                };
                info!(waiting, unreachable, retry_in_ms = wait.as_millis() as u64, "commit applied in part; the rest on a later pass");
                self.sched.after(Request::Head, wait);
            } else {
                self.backoff.succeeded(&Request::Head);
            }
            let summary = {
                let mut st = self.shared.status.lock().unwrap();
                if !cloud_failures.is_empty() {
                    let reason = cloud_failures.join("; ");
                    st.quarantined = Some(Quarantine {
                        commit: commit.clone(),
                        reason: format!("apply failed: {reason}"),
                    });
                    warn!(%reason, "commit quarantined");
                    format!(
                        "{} server change(s) failed; commit quarantined",
                        cloud_failures.len()
                    )
                } else if failed.is_empty() && unreachable > 0 {
                    format!(
                        "{unreachable} host(s) unreachable{}; trying again with backoff",
                        if waiting > 0 {
                            format!(", {waiting} busy")
                        } else {
                            String::new()
                        }
                    )
                } else if failed.is_empty() && waiting > 0 {
                    format!("{waiting} host(s) busy (a maintenance job or another run); applying to them when they are free")
                } else if failed.is_empty() {
                    st.applied_commit = Some(commit.clone());
                    st.quarantined = None;
                    format!("applied to {} host(s)", hosts.len())
                } else {
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
                    st.quarantined = Some(Quarantine {
                        commit: commit.clone(),
                        reason: format!("apply failed: {reason}"),
                    });
                    warn!(%reason, "commit quarantined");
                    format!(
                        "apply failed on {} of {} host(s); commit quarantined",
                        failed.len(),
                        hosts.len()
                    )
                }
            };
            let mut note =
                status::note(&commit, &summary, &hosts, started.elapsed().as_secs_f64());
            if let Some(r) = &review {
                note.push_str(&format!("\nreview: {r}\n"));
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
            if let Some(settings) = fleet.settings.forge.clone() {
                // The apply on main, reported on its commit; a forge outage never blocks.
                let (sha, text, name) = (
                    commit.clone(),
                    format!("```\n{note}```\n"),
                    fleet.name.clone(),
                );
                let forge = self.forge(&settings);
                let sent =
                    tokio::task::spawn_blocking(move || -> Result<(), crate::forge::ForgeError> {
                        let forge = forge?;
                        let state = if ok { "success" } else { "failure" };
                        if forge.status(
                            &sha,
                            &format!("tidekeeper/{name}/apply"),
                            state,
                            &summary,
                        )? {
                            forge.commit_comment(&sha, &text)?;
                        }
                        Ok(())
                    })
                    .await
                    .expect("forge task");
                if let Err(e) = sent {
                    warn!(error = %e, "could not report the apply to the forge");
                    self.shared
                        .note_stale("forge", format!("forge unreachable: {e}"));
                }
            }
            self.push_status(Some((commit, note))).await;
        }
        .instrument(span)
        .await
    }

    /// No new commit: look for drift with the last good config.
    async fn drift_check(&mut self) {
        let Some((commit, fleet, policies)) = self.good.clone() else {
            return;
        };
        let correct = fleet.settings.drift == DriftMode::Correct;
        let span = info_span!("drift", commit = %&commit[..12], correct);
        async {
            let quarantined = self
                .shared
                .status
                .lock()
                .unwrap()
                .quarantined
                .as_ref()
                .is_some_and(|q| q.commit == commit);
            // Correcting drift means applying; never for a quarantined commit.
            let apply = correct && !quarantined && self.suspension(&commit, &fleet).is_none();
            let before = self.shared.status.lock().unwrap().files();
            if let Err(Refused::Denied(denied)) =
                self.reconcile(&commit, fleet, &policies, apply, None).await
            {
                warn!(denials = denied.len(), "the policies deny correcting drift");
            }
            let after = self.shared.status.lock().unwrap().files();
            let changed = before
                .iter()
                .filter(|(k, _)| k.starts_with("status/hosts/"))
                .any(|(k, v)| after.get(k) != Some(v));
            // Push only when something a reader cares about changed.
            let state_changed =
                changed || before.get("badges/fleet.svg") != after.get("badges/fleet.svg");
            if state_changed {
                self.push_status(None).await;
            }
        }
        .instrument(span)
        .await
    }

    /// Status and notes go where the followed branch's `status:` says.
    async fn adopt_status_refs(&mut self, fleet: &Fleet) {
        let (branch, notes) = (
            fleet.settings.status_branch.clone(),
            fleet.settings.notes_ref.clone(),
        );
        let moved = self.mirror.lock().unwrap().set_status_refs(&branch, &notes);
        if moved {
            info!(status_branch = %branch, notes_ref = %notes, "status and notes refs from tidekeeper.yaml");
            let _ = self.blocking(|m| m.fetch()).await;
        }
    }

    /// Whether applies and jobs are stopped, and by whom: `suspend: true` in
    /// the commit's config, or an operator (POST /suspend). Recorded in the status.
    fn suspension(&self, commit: &str, fleet: &Fleet) -> Option<status::Suspension> {
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

    /// A suspended fleet: the commit is planned and reported, nothing applied;
    /// it is applied on the first pass after resuming.
    async fn hold(
        &mut self,
        commit: String,
        fleet: Arc<Fleet>,
        policies: &Policies,
        s: status::Suspension,
    ) {
        info!(by = %s.by, reason = %s.reason, "suspended: planning only");
        self.incomplete = Some(commit.clone());
        let hosts = match self.reconcile(&commit, fleet, policies, false, None).await {
            Ok(r) => r.hosts,
            Err(_) => vec![],
        };
        let summary = format!(
            "suspended by {} ({}): planned, nothing applied",
            s.by, s.reason
        );
        let note = status::note(&commit, &summary, &hosts, 0.0);
        self.push_status(Some((commit, note))).await;
    }

    /// Fetch; apply the head if it is new, was retried, or was applied only in part.
    async fn on_head(&mut self) {
        let head = self.fetch().await;
        // Back off while the remote is unreachable.
        let wait = self.poll_interval() * 2u32.pow(self.fetch_failures.min(4));
        self.sched
            .after(Request::Head, wait.min(Duration::from_secs(300)));
        if head.is_some() && self.unpushed.lock().unwrap().is_some() {
            self.push_status(None).await;
        }
        if !self.cfg.proposals.is_empty() {
            self.sched.now(Request::Proposals);
        }
        let Some(head) = head else { return };
        self.shared.status.lock().unwrap().head_commit = Some(head.clone());
        let retry = self.shared.retry.load(Ordering::SeqCst);
        // While suspended, a held commit is not planned again on every poll.
        let suspended = self.shared.status.lock().unwrap().suspended.clone();
        let held = suspended.is_some() && self.last_seen.as_deref() == Some(head.as_str());
        if suspended != self.reported_suspension {
            self.reported_suspension = suspended;
            self.push_status(None).await;
        }
        if held && !retry {
            return;
        }
        if self.last_seen.as_deref() != Some(head.as_str()) || retry || self.incomplete.is_some() {
            self.last_seen = Some(head.clone());
            self.on_commit(head).await;
            let next = tokio::time::Instant::now() + self.drift_interval();
            self.sched.reset(Request::Drift, next);
        }
    }

    async fn run(mut self) {
        // After a restart, the status branch says what was already applied;
        // which branch that is, the head's config says.
        if let Some(head) = self.fetch().await {
            let path = self.mirror.lock().unwrap().path.clone();
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
                self.adopt_status_refs(&f).await;
            }
            let prior = self
                .blocking(|m| m.status_file("status/fleet.json"))
                .await
                .and_then(|b| serde_json::from_slice::<FleetStatus>(&b).ok());
            if let Some(p) = prior {
                let mut st = self.shared.status.lock().unwrap();
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
            self.shared.status.lock().unwrap().head_commit = Some(head.clone());
            self.last_seen = Some(head.clone());
            self.on_commit(head).await;
            self.catch_up();
        }
        let mut done = self.job_rx.take().expect("run once");
        self.sched.after(Request::Head, self.poll_interval());
        self.sched.after(Request::Drift, self.drift_interval());
        if !self.cfg.proposals.is_empty() {
            self.sched.now(Request::Proposals);
        }
        loop {
            let req = tokio::select! {
                biased;
                _ = self.shutdown.notified() => break,
                Some(d) = done.recv() => {
                    self.job_finished(d).await;
                    continue;
                }
                r = self.sched.next() => r,
            };
            self.shared.metrics.lock().unwrap().queue = self.sched.len() as u64;
            match req {
                Request::Head => self.on_head().await,
                Request::Proposals => self.plan_proposals().await,
                Request::Drift => {
                    self.drift_check().await;
                    let next = tokio::time::Instant::now() + self.drift_interval();
                    self.sched.reset(Request::Drift, next);
                }
                Request::Job(name) => match self.due.get(&name).copied() {
                    // Due by the wall clock (a reschedule may have moved it since).
                    Some(t) if chrono::Utc::now() + chrono::Duration::seconds(1) >= t => {
                        self.start_job(&name)
                    }
                    Some(t) => self.sched.at(Request::Job(name), jobs::instant_of(t)),
                    None => {}
                },
                Request::RunJob(name) => self.start_job(&name),
            }
        }
        info!("reconcile loop stopped");
    }
}

/// What a reconcile did to the hosts, and which server changes failed.
struct Reconciled {
    hosts: Vec<HostStatus>,
    cloud_failures: Vec<String>,
    /// How the plan compares with the one reviewed on the merged proposal.
    review: Option<String>,
}

/// Why a commit was not applied at all.
enum Refused {
    /// The policies deny the plan (or a destroy lacks permission).
    Denied(Vec<String>),
    /// `apply.require_reviewed_plan`: the plan is not the one reviewed.
    Held(String),
}

/// The reviewed plan of the proposal a merge commit's tree comes from.
struct Review {
    proposal: String,
    reviewed: proposals::Reviewed,
    /// `tidekeeper retry`: apply it as it is now.
    accept: bool,
}

fn host_status(mut h: HostStatus, r: &HostResult, commit: &str, applied: bool) -> HostStatus {
    h.last_reconcile = Some(now());
    h.duration_ms = Some(r.elapsed.as_millis() as u64);
    h.error_kind = r.error_kind;
    match (&r.error, r.error_kind, &r.plan) {
        (Some(e), Some(HostError::Locked), _) => {
            // Another run holds the host: not a failure of this commit; look again soon.
            h.state = HostState::Pending;
            h.last_error = Some(e.clone());
            h.last_result = Some("waiting for the host's lock".into());
        }
        (Some(e), Some(HostError::RolloutStopped), _) => {
            // Left as it was: the rollout stopped before reaching it.
            h.state = HostState::Pending;
            h.last_error = Some(e.clone());
            h.last_result = Some("not applied: the rollout stopped".into());
        }
        (Some(_), Some(HostError::NotCreated), _) => {
            // A cloud server the cloud stage has not created yet.
            h.state = HostState::Pending;
            h.last_error = None;
            h.last_result = Some("not created yet: no address".into());
        }
        (Some(e), kind, plan) => {
            h.state = if plan.is_none() && kind == Some(HostError::Unreachable) {
                HostState::Unreachable
            } else {
                HostState::Failed
            };
            h.last_error = Some(e.clone());
            h.last_result = Some(
                if applied {
                    "apply failed"
                } else {
                    "plan failed"
                }
                .into(),
            );
        }
        (None, _, Some(p)) => {
            h.last_error = None;
            if applied {
                h.state = HostState::Synced;
                h.applied_commit = Some(commit.to_string());
                h.drift.clear();
                h.last_result = Some(if p.has_changes() {
                    format!("{} change(s) applied", p.changes.len() + p.handlers.len())
                } else {
                    "no changes".into()
                });
            } else if p.has_changes() {
                h.state = HostState::Drifted;
                h.drift = p
                    .changes
                    .iter()
                    .map(|c| format!("{} {} {}", c.action.symbol(), c.kind, c.id))
                    .collect();
                h.last_result = Some(format!("drift: {} resource(s)", h.drift.len()));
            } else {
                h.state = HostState::Synced;
                h.drift.clear();
                h.last_result = Some("no drift".into());
            }
        }
        (None, _, None) => {
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

/// Run the daemon until SIGTERM or SIGINT: binds `cfg.listen` and installs
/// the signal handlers, then [`serve`]s.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: cfg.listen,
            reason: e.to_string(),
        })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let signal = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(listener, signal, cfg, |_| {}).await
}

/// The daemon on `listener` until `shutdown` completes. The listener and the
/// shutdown come from the caller (a test binds 127.0.0.1:0 and stops it when
/// it is done); `started` gets the shared state once it exists.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    cfg: Config,
    started: impl FnOnce(Arc<Shared>),
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| DaemonError::State {
        path: cfg.state_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let status_branch =
        std::env::var("TIDEKEEPER_STATUS_BRANCH").unwrap_or_else(|_| "tidekeeper/status".into());
    let mirror = Mirror::open(
        &cfg.state_dir,
        &cfg.repo,
        &cfg.branch,
        &status_branch,
        cfg.git.clone(),
    )?;
    let sched = Arc::new(Scheduler::default());
    let shared = Arc::new(Shared {
        status: Mutex::new(FleetStatus {
            repo: cfg.repo.clone(),
            branch: cfg.branch.clone(),
            ..Default::default()
        }),
        metrics: Mutex::new(Metrics::default()),
        scheduler: sched.clone(),
        retry: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        webhook_secret: cfg.webhook_secret.clone().map(String::into_bytes),
        api_token: cfg.api_token.clone().map(String::into_bytes),
        stale: Mutex::new(BTreeMap::new()),
    });
    let addr = listener.local_addr().map_err(|e| DaemonError::Listen {
        addr: cfg.listen,
        reason: e.to_string(),
    })?;
    info!(%addr, repo = %cfg.repo, branch = %cfg.branch, "tidekeeper daemon listening");
    let app = http::router(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let _watcher = if cfg.watch {
        watch(&cfg.repo, &cfg.branch, shared.clone())
    } else {
        None
    };
    started(shared.clone());
    let stop = Arc::new(Notify::new());
    let record = proposals::load_record(&cfg.state_dir);
    let (job_done, job_rx) = tokio::sync::mpsc::unbounded_channel();
    let lp = Loop {
        cfg,
        shared: shared.clone(),
        mirror: Arc::new(Mutex::new(mirror)),
        good: None,
        last_seen: None,
        last_fetch: None,
        fetch_failures: 0,
        shutdown: stop.clone(),
        incomplete: None,
        reported_suspension: None,
        sched,
        backoff: Backoff::default(),
        locks: Arc::new(HostLocks::default()),
        jobs_running: Default::default(),
        job_done,
        job_rx: Some(job_rx),
        due: BTreeMap::new(),
        proposals: record,
        forge: None,
        unpushed: Mutex::new(None),
    };
    let mut worker = tokio::spawn(lp.run());
    tokio::select! {
        _ = &mut worker => {}
        _ = shutdown => {}
    }
    info!("shutting down: finishing the current step on each host");
    stop.notify_one();
    // The loop finishes what it is doing (each host's apply is one script
    // that ends on its own) and pushes status; give it until 9 s.
    if tokio::time::timeout(Duration::from_secs(9), &mut worker)
        .await
        .is_err()
    {
        warn!(
            "the current reconcile did not finish in time; the hosts finish their step on their own"
        );
    }
    server.abort();
    Ok(())
}

/// For a repo on this machine: wake on ref updates of the watched branch
/// (never on tidekeeper's own status and notes writes).
fn watch(repo: &str, branch: &str, shared: Arc<Shared>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let path = PathBuf::from(repo.strip_prefix("file://").unwrap_or(repo));
    if !path.exists() {
        return None;
    }
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path.clone()
    };
    let branch_ref = git_dir.join("refs/heads").join(branch);
    let packed = git_dir.join("packed-refs");
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Only writes count: fetching reads the same ref files, and reacting
        // to reads would make every fetch trigger the next.
        if let Ok(ev) = ev
            && matches!(
                ev.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            )
            && !matches!(
                ev.kind,
                notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
            )
            && ev.paths.iter().any(|p| p == &branch_ref || p == &packed)
        {
            shared.poke();
        }
    })
    .ok()?;
    w.watch(&git_dir.join("refs/heads"), RecursiveMode::Recursive)
        .ok()?;
    let _ = w.watch(&git_dir, RecursiveMode::NonRecursive);
    Some(w)
}
