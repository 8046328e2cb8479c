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
//! Built as kube-runtime's reconciler: a read-only `Ctx` (settings,
//! clock, shared status, mirror, locks, scheduler, report channels) and a
//! `State` the runner owns; each request's handler is a free function of
//! `(&Ctx, &mut State, …)` returning what comes next (`Requeue`) or why to
//! try again (`Again`); modes (apply, changed files only, the reviewed plan)
//! are arguments, never fields toggled around a call.
//!
//! - `runner`: the loop that takes what is due and settles what comes next.
//! - [`scheduler`]: keyed requests on tokio time; backoff with jitter.
//! - [`locks`]: per-host locks shared by commits, drift checks and jobs.
//! - `jobs`: maintenance under the daemon; `proposals`: planning PR heads.
//! - `commit`, `drift`, `triggers`, `rollout`: what each request does.
//! - `windows`: apply windows: a commit held until one opens, hosts left
//!   out of an apply while theirs is shut.
//! - [`mirror`] (in [`crate::source`]): the bare mirror; status branch and
//!   notes pushed with a lease.
//! - [`status`]: status, badges, the counters behind /metrics, the status page (pure).
//! - [`metrics`]: /metrics in OpenMetrics (prometheus-client), with the process's own figures.
//! - [`http`]: the HTTP server.

mod alerts;
mod commit;
pub(crate) mod dashboard;
mod drift;
pub(crate) mod history;
pub(crate) mod http;
mod jobs;
pub(crate) mod locks;
pub mod metrics;
mod proposals;
mod requirements;
mod rollout;
mod runner;
pub mod scheduler;
pub mod status;
mod trail;
mod triggers;
mod windows;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;
use tracing::{error, info, warn};

use locks::HostLocks;
use scheduler::{Again, Backoff, Request, Requeue, Scheduler};

use crate::clock::Clock;
use crate::engine;
use crate::model::desired::Fleet;
use crate::source::ConfigTree;
pub use crate::source::mirror;
use mirror::Mirror;
use status::{FleetStatus, Metrics};

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
    /// Only hosts with these labels (`KEY=VALUE[,…]` each, all must match).
    pub labels: Vec<String>,
    /// Reaching the config repo over ssh:// or https://.
    pub git: mirror::Access,
    /// Refs of proposed changes to plan read-only (e.g. `refs/pull/*/head`).
    pub proposals: Vec<String>,
    /// A host rolls back a risky change unless access is proven within this time.
    pub rollback_after: Duration,
    /// The executable whose hidden `proposal-worker` command plans a
    /// proposal (this binary; in-process tests name the built one).
    pub worker: PathBuf,
}

/// A commit's `policies/*.rego`, as (path, text).
type Policies = Arc<Vec<(String, String)>>;

/// State shared between the loop and the HTTP server.
pub struct Shared {
    pub status: Mutex<FleetStatus>,
    pub metrics: Mutex<Metrics>,
    /// Every trigger asks here; the runner takes what is due.
    pub scheduler: Arc<Scheduler>,
    pub ready: AtomicBool,
    pub webhook_secret: Option<Vec<u8>>,
    pub api_token: Option<Vec<u8>>,
    stale: Mutex<BTreeMap<&'static str, String>>,
    /// Alerts and their messages (outbox in the state directory).
    pub notifier: crate::notify::deliver::Notifier,
    /// What the dashboard draws beyond the status.
    pub board: Mutex<Board>,
    /// A held commit an operator released, waiting for the loop.
    pub release: Mutex<Option<status::Release>>,
    /// The daemon's clock: the pages' "5 min ago" and the events' times.
    pub clock: Clock,
}

/// The dashboard's own data: the history (kept in the state directory),
/// the applied commits read from the status branch, the forge's web address.
#[derive(Default)]
pub struct Board {
    pub history: history::History,
    pub timeline: Vec<(i64, String)>,
    /// Messages and authors of the applied commits, from the mirror.
    pub commits: BTreeMap<String, history::CommitInfo>,
    pub web: Option<String>,
    file: Option<std::path::PathBuf>,
}

impl Board {
    fn open(state_dir: &std::path::Path) -> (Board, Option<crate::state_file::Unreadable>) {
        let file = state_dir.join("history.json");
        let (history, unreadable) = crate::state_file::read(&file);
        let board = Board {
            history,
            file: Some(file),
            ..Default::default()
        };
        (board, unreadable)
    }

    /// Written atomically; a failure costs only history.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if let Err(e) = crate::state_file::write(file, &self.history) {
            warn!(error = %e, "cannot keep the dashboard's history in the state directory");
        }
    }
}

impl Shared {
    /// "Look again" (a webhook, a file watch, a retry).
    pub fn poke(&self) {
        self.scheduler.now(Request::Head);
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
    #[error("{0}")]
    Clock(String),
    #[error("{0}")]
    Hosts(String),
    #[error(
        "{0} is empty: an empty secret is no secret; set it to a long random value, or unset it"
    )]
    EmptySecret(&'static str),
}

/// Secrets given but empty (or blank) are refused at start, by name.
pub fn check_secrets(cfg: &Config) -> Result<(), DaemonError> {
    let blank = |v: &Option<String>| v.as_ref().is_some_and(|s| s.trim().is_empty());
    if blank(&cfg.webhook_secret) {
        return Err(DaemonError::EmptySecret(
            "TIDEKEEPER_WEBHOOK_SECRET (--webhook-secret)",
        ));
    }
    if blank(&cfg.api_token) {
        return Err(DaemonError::EmptySecret(
            "TIDEKEEPER_API_TOKEN (--api-token)",
        ));
    }
    Ok(())
}

/// Diagnostics as `file:line:col` lines.
fn lines(d: &crate::model::Diagnostics) -> Vec<String> {
    d.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Applied commits the dashboard lists (read from the status branch at
/// start, then added as they are pushed).
const TIMELINE: usize = 50;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What every handler reads and never changes: the daemon's settings, the
/// clock, the shared status, the mirror, the host locks, the scheduler, and
/// where work in its own task reports back.
struct Ctx {
    cfg: Config,
    /// Wall time for cron and windows; work on hosts goes through it.
    clock: Clock,
    shared: Arc<Shared>,
    mirror: Arc<Mutex<Mirror>>,
    sched: Arc<Scheduler>,
    locks: Arc<HostLocks>,
    /// Vouches for hosts' stat caches, waiting for their next drift check.
    vouches: Arc<engine::Vouches>,
    shutdown: Arc<Notify>,
    job_done: tokio::sync::mpsc::UnboundedSender<jobs::JobDone>,
    rollout_tx: tokio::sync::mpsc::UnboundedSender<rollout::Event>,
    proposal_tx: tokio::sync::mpsc::UnboundedSender<proposals::ProposalDone>,
    /// A status push failed: the notes it carried (commit → text), pushed
    /// again with the status on the next poll.
    unpushed: Mutex<Option<BTreeMap<String, String>>>,
}

/// What the runner owns and the handlers change, grouped by meaning.
#[derive(Default)]
struct State {
    head: Head,
    fetch: Fetching,
    backoff: Backoff,
    jobs: Jobs,
    /// Rollouts going on in their own tasks: commit → its config and start.
    rolling: BTreeMap<String, (Arc<Fleet>, std::time::Instant)>,
    proposals: Proposals,
    /// One forge client for the daemon's life (it remembers which statuses
    /// it posted, so repeats are not sent), rebuilt when the settings change.
    forge: Option<(String, Arc<crate::forge::Forge>)>,
    /// When a drift check last hashed every managed file; until
    /// `intervals.full_check` has passed, drift checks hash only files
    /// whose stat changed.
    last_full_check: Option<chrono::DateTime<chrono::Utc>>,
    /// A commit held by the apply windows, or released outside them.
    windows: windows::Waiting,
}

/// The followed branch as the loop last saw it.
#[derive(Default)]
struct Head {
    /// Last valid desired state, kept while newer commits are invalid.
    good: Option<(String, Arc<Fleet>, Policies)>,
    last_seen: Option<String>,
    /// The commit last applied only in part (hosts busy with a job, locked
    /// by another run, or unreachable): applied again on the next pass.
    incomplete: Option<String>,
    /// The suspension the status branch shows (pushed when it changes).
    reported_suspension: Option<status::Suspension>,
    /// The commit an operator released (`tidekeeper release`): not held
    /// again on the passes that finish applying it.
    released: Option<String>,
    /// The held commit a forge approval let through, and who approved it
    /// (for its note's audit trail).
    approved: Option<(String, String)>,
    /// The last commit applied had `apply.require_reviewed_plan` on: a
    /// commit turning it off is itself held until reviewed or released.
    reviewed_only: bool,
    /// The pull request the commit being applied came from, as
    /// `apply.apply_requirements` found it (for its note).
    approval: Option<(String, requirements::Approval)>,
}

/// How fetching the config repo goes.
#[derive(Default)]
struct Fetching {
    last_ok: Option<Instant>,
    failures: u32,
}

/// Maintenance jobs: which run in the background, and when each is due.
#[derive(Default)]
struct Jobs {
    running: std::collections::BTreeSet<String>,
    due: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
}

/// Proposals: what was planned, what was fetched, what is being planned.
#[derive(Default)]
struct Proposals {
    /// Proposal ref → the head planned last (kept in the state directory).
    record: proposals::Record,
    /// Proposal ref → its head, as last fetched.
    heads: BTreeMap<String, String>,
    /// Proposal ref → the head its worker is planning now.
    planning: BTreeMap<String, String>,
}

/// The reconciler: its context, its state, and where background work
/// reports (taken once, by the runner).
struct Loop {
    ctx: Ctx,
    st: State,
    job_rx: Option<tokio::sync::mpsc::UnboundedReceiver<jobs::JobDone>>,
    rollout_rx: Option<tokio::sync::mpsc::UnboundedReceiver<rollout::Event>>,
    proposal_rx: Option<tokio::sync::mpsc::UnboundedReceiver<proposals::ProposalDone>>,
}

/// Is a drift check at `now` due to hash every file?
fn full_check_due(
    last: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    every: Duration,
) -> bool {
    last.is_none_or(|l| now.signed_duration_since(l).to_std().unwrap_or_default() >= every)
}

impl Ctx {
    /// An operator asked to release `commit` (`tidekeeper release`) and it
    /// has not been taken up yet.
    fn release_asked(&self, commit: &str) -> bool {
        self.shared
            .release
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|r| r.commit == commit)
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
                            .and_then(|oid| m.push_note(oid, &crate::report::note_text(&text)));
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
                // The timeline grows by what was just pushed: reading the
                // branch's history again on every push would cost a walk
                // through hundreds of status commits each time.
                if let Some(a) = &applied {
                    let c = a.clone();
                    let info = self
                        .blocking(move |m| m.commit_info(&c))
                        .await
                        .map(|(subject, author)| history::CommitInfo { subject, author });
                    let mut board = self.shared.board.lock().unwrap();
                    if board.timeline.first().map(|t| &t.1) != Some(a) {
                        let at = self.clock.now().timestamp();
                        board.timeline.insert(0, (at, a.clone()));
                        board.timeline.truncate(TIMELINE);
                    }
                    if let Some(info) = info {
                        board.commits.insert(a.clone(), info);
                    }
                    let shown: Vec<String> = board.timeline.iter().map(|t| t.1.clone()).collect();
                    board.commits.retain(|c, _| shown.contains(c));
                }
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

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mirror) -> T + Send + 'static,
    ) -> T {
        let m = self.mirror.clone();
        tokio::task::spawn_blocking(move || f(&m.lock().unwrap()))
            .await
            .expect("git task")
    }

    /// Load a commit's config: the fleet and its `policies/*.rego`, or its
    /// errors as `file:line:col` lines. The tree is read from git once.
    async fn load(&self, commit: &str) -> Result<(Fleet, Policies), Vec<String>> {
        let path = self.mirror.lock().unwrap().path.clone();
        let c = commit.to_string();
        tokio::task::spawn_blocking(move || {
            let tree = ConfigTree::from_git(&path, &c).map_err(|e| vec![e.to_string()])?;
            let lines = |d: crate::model::Diagnostics| lines(&d);
            let fleet = crate::model::load(&tree)
                .and_then(crate::engine::kinds::known_settings)
                .map_err(lines)?;
            // Secrets are decrypted in memory when an identity is configured.
            let fleet = match crate::secrets::identity(&fleet.settings) {
                Ok(None) => fleet,
                Ok(Some(id)) => {
                    crate::model::load_with_identity(&tree, Some(&id)).map_err(lines)?
                }
                Err(e) => return Err(vec![e.to_string()]),
            };
            for w in &fleet.warnings {
                warn!(commit = %c, "{}", w.warning_text());
            }
            Ok((fleet, Arc::new(tree.policies())))
        })
        .await
        .expect("load task")
    }

    /// The hosts this daemon reconciles (`--host`, or all). A `--host`
    /// the fleet does not have is said loudly, in the log and in /status:
    /// a pull-mode daemon whose hostname is not the host's name would
    /// otherwise manage nothing without a word.
    fn selected(&self, fleet: &Fleet) -> Vec<String> {
        let unknown: Vec<&str> = self
            .cfg
            .hosts
            .iter()
            .filter(|n| fleet.host(n).is_none())
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            self.shared.clear_stale("hosts");
        } else {
            let all: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
            let why = format!(
                "--host {} is not in fleet {:?}: nothing is reconciled for it (hosts are: {})",
                unknown.join(", "),
                fleet.name,
                all.join(", ")
            );
            tracing::error!(hosts = %unknown.join(","), "{why}");
            self.shared.note_stale("hosts", why);
        }
        fleet
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| self.cfg.hosts.is_empty() || self.cfg.hosts.contains(n))
            .collect()
    }

    /// How the engine works on `fleet`'s hosts; `changed_files_only`: a
    /// drift check hashes only files whose stat moved.
    fn options(&self, fleet: &Fleet, changed_files_only: bool) -> engine::Options {
        engine::Options {
            parallel: fleet.settings.parallelism.max(1) as usize,
            ssh_key: self.cfg.ssh_key.clone(),
            rollback_deadline: self.cfg.rollback_after,
            redactions: fleet.redactions.clone(),
            clock: self.clock.clone(),
            changed_files_only,
            record_file_stats: true,
            vouches: Some(self.vouches.clone()),
            ..Default::default()
        }
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

    /// Status and notes go where the followed branch's `status:` says.
    async fn adopt_status_refs(&self, fleet: &Fleet) {
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
}

fn poll_interval(ctx: &Ctx, state: &State) -> Duration {
    ctx.cfg.poll.unwrap_or_else(|| {
        Duration::from_secs(
            state
                .head
                .good
                .as_ref()
                .map(|g| g.1.settings.poll_interval_secs)
                .unwrap_or(60),
        )
    })
}

fn drift_interval(ctx: &Ctx, state: &State) -> Duration {
    ctx.cfg.drift.unwrap_or_else(|| {
        Duration::from_secs(
            state
                .head
                .good
                .as_ref()
                .map(|g| g.1.settings.drift_interval_secs)
                .unwrap_or(600),
        )
    })
}

/// Fetch; the branch head, or None (recorded as a failure) when the remote is unreachable.
async fn fetch(ctx: &Ctx, state: &mut State) -> Option<String> {
    ctx.shared.metrics.lock().unwrap().fetches += 1;
    match ctx.blocking(|m| m.fetch()).await {
        Ok(oid) => {
            state.fetch.failures = 0;
            state.fetch.last_ok = Some(Instant::now());
            ctx.shared.ready.store(true, Ordering::SeqCst);
            ctx.shared.clear_stale("fetch");
            let mut m = ctx.shared.metrics.lock().unwrap();
            m.last_fetch_unix = Some(ctx.clock.now().timestamp());
            ctx.shared.status.lock().unwrap().last_fetch_ok = Some(now());
            Some(oid.to_string())
        }
        Err(e) => {
            state.fetch.failures += 1;
            ctx.shared.metrics.lock().unwrap().fetch_failures += 1;
            warn!(error = %e, failures = state.fetch.failures, "fetch failed");
            let stale_after = poll_interval(ctx, state) * 3;
            let stale = state
                .fetch
                .last_ok
                .is_none_or(|t| t.elapsed() >= stale_after);
            if stale || state.fetch.failures >= 3 {
                ctx.shared.note_stale(
                    "fetch",
                    format!(
                        "no successful fetch of {} for {} attempts: {e}",
                        ctx.cfg.repo, state.fetch.failures
                    ),
                );
            }
            None
        }
    }
}

/// The forge client for `settings`.
fn forge(
    ctx: &Ctx,
    state: &mut State,
    settings: &crate::model::desired::Forge,
) -> Result<Arc<crate::forge::Forge>, crate::forge::ForgeError> {
    let key = serde_json::to_string(settings).unwrap_or_default();
    if let Some((k, f)) = &state.forge
        && *k == key
    {
        return Ok(f.clone());
    }
    let f = Arc::new(crate::forge::Forge::remembering(
        settings,
        ctx.cfg.state_dir.join("forge-statuses.json"),
    )?);
    state.forge = Some((key, f.clone()));
    Ok(f)
}

/// A held commit's `pending` status on the forge (when the fleet has one),
/// linking the daemon's status page when it listens on a given address.
async fn pending_on_forge(
    ctx: &Ctx,
    state: &mut State,
    fleet: &Fleet,
    commit: &str,
    description: &str,
) {
    let Some(settings) = fleet.settings.forge.clone() else {
        return;
    };
    let forge = forge(ctx, state, &settings);
    let link =
        (!ctx.cfg.listen.ip().is_unspecified()).then(|| format!("http://{}/", ctx.cfg.listen));
    let context = format!("tidekeeper/{}/apply", fleet.name);
    let sent = async move {
        forge?
            .status_linked(commit, &context, "pending", description, link.as_deref())
            .await
    }
    .await;
    if let Err(e) = sent {
        warn!(error = %e, "could not report the held commit to the forge");
        ctx.shared
            .note_stale("forge", format!("forge unreachable: {e}"));
    }
}

/// Read the status for problems a human should hear about, and queue
/// the messages (level-triggered: after every step).
fn alerts(ctx: &Ctx, state: &State) {
    let Some((_, fleet, _)) = &state.head.good else {
        return;
    };
    let n = ctx.shared.notifier.settings();
    if n.sinks.is_empty() {
        return;
    }
    let obs = {
        let st = ctx.shared.status.lock().unwrap();
        let mut obs = alerts::observations(&st, fleet, &n, state.fetch.failures > 0);
        obs.extend(alerts::cost(
            &st.monthly_cost,
            &n,
            "fleet".into(),
            "the fleet",
        ));
        obs
    };
    let changed = ctx.shared.notifier.observe("status", ctx.clock.now(), obs);
    alert_events(ctx, &changed);
}

/// Alerts that fired or resolved, in the dashboard's events.
fn alert_events(ctx: &Ctx, changed: &[crate::notify::Event]) {
    if changed.is_empty() {
        return;
    }
    let mut board = ctx.shared.board.lock().unwrap();
    for e in changed {
        let kind = match e.status {
            crate::notify::Status::Resolved => "alert resolved",
            _ => "alert firing",
        };
        let text = format!("{}: {}", e.subject, e.summary);
        board.history.event(&ctx.clock.stamp(), kind, text);
    }
    board.save();
}

/// The state shared with the HTTP server. Every state file is read here,
/// at start; what cannot be read is set aside and shown in /status until
/// the daemon restarts. The proposals' record goes to the loop.
fn open_shared(
    cfg: &Config,
    sched: Arc<Scheduler>,
    clock: Clock,
) -> (Arc<Shared>, proposals::Record) {
    let (notifier, unreadable_notify) =
        crate::notify::deliver::Notifier::open_reporting(Some(&cfg.state_dir));
    let (board, unreadable_history) = Board::open(&cfg.state_dir);
    let (record, unreadable_record) = proposals::load_record(&cfg.state_dir);
    let unreadable_state: Vec<_> = [unreadable_notify, unreadable_history, unreadable_record]
        .into_iter()
        .flatten()
        .collect();
    let shared = Arc::new(Shared {
        status: Mutex::new(FleetStatus {
            repo: cfg.repo.clone(),
            branch: cfg.branch.clone(),
            unreadable_state,
            ..Default::default()
        }),
        metrics: Mutex::new(Metrics::default()),
        scheduler: sched,
        ready: AtomicBool::new(false),
        webhook_secret: cfg.webhook_secret.clone().map(String::into_bytes),
        api_token: cfg.api_token.clone().map(String::into_bytes),
        stale: Mutex::new(BTreeMap::new()),
        notifier,
        board: Mutex::new(board),
        release: Mutex::new(None),
        clock,
    });
    (shared, record)
}

impl Loop {
    /// The loop as it starts: nothing seen yet, nothing running.
    fn new(
        cfg: Config,
        clock: Clock,
        shared: Arc<Shared>,
        mirror: Mirror,
        sched: Arc<Scheduler>,
        record: proposals::Record,
        stop: Arc<Notify>,
    ) -> Loop {
        let (job_done, job_rx) = tokio::sync::mpsc::unbounded_channel();
        let (rollout_tx, rollout_rx) = tokio::sync::mpsc::unbounded_channel();
        let (proposal_tx, proposal_rx) = tokio::sync::mpsc::unbounded_channel();
        Loop {
            ctx: Ctx {
                cfg,
                clock,
                shared,
                mirror: Arc::new(Mutex::new(mirror)),
                sched,
                locks: Arc::new(HostLocks::default()),
                vouches: Default::default(),
                shutdown: stop,
                job_done,
                rollout_tx,
                proposal_tx,
                unpushed: Mutex::new(None),
            },
            st: State {
                proposals: Proposals {
                    record,
                    ..Default::default()
                },
                ..Default::default()
            },
            job_rx: Some(job_rx),
            rollout_rx: Some(rollout_rx),
            proposal_rx: Some(proposal_rx),
        }
    }
}

/// What a request asked for next: its regular interval, or the error
/// policy's backoff with jitter for its key.
fn settle(ctx: &Ctx, state: &mut State, req: Request, outcome: Result<Requeue, Again>) {
    match outcome {
        Ok(next) => {
            state.backoff.succeeded(&req);
            if let Requeue::After(d) = next {
                ctx.sched.after(req, d);
            }
        }
        Err(again) => {
            let interval = match req {
                Request::Drift => drift_interval(ctx, state),
                _ => poll_interval(ctx, state),
            };
            let (first, max, keep_interval) = again.policy(interval);
            let wait = state.backoff.failed(&req, first, max);
            info!(request = req.label(), reason = %again, failures = state.backoff.failures(&req), retry_in_ms = wait.as_millis() as u64, "trying again");
            *ctx.shared
                .metrics
                .lock()
                .unwrap()
                .requeues
                .entry(again.label())
                .or_default() += 1;
            if keep_interval {
                ctx.sched.after(req.clone(), interval);
            }
            ctx.sched.after(req, wait);
        }
    }
}

/// Run the daemon until SIGTERM or SIGINT: binds `cfg.listen` and installs
/// the signal handlers, then [`serve`]s.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    check_secrets(&cfg)?;
    let clock = Clock::from_env().map_err(DaemonError::Clock)?;
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
    serve(listener, signal, clock, cfg, |_| {}).await
}

/// `--host` and `-l` checked against the branch's head before the daemon
/// starts: a selection that matches no host (a pull-mode daemon whose
/// hostname is not its host's name) is refused rather than run managing
/// nothing. Globs and labels become the names they match at start.
fn choose_hosts(mut cfg: Config, mirror: &Mirror) -> Result<Config, DaemonError> {
    let sel =
        crate::model::select::Selector::new(&cfg.hosts, &cfg.labels).map_err(DaemonError::Hosts)?;
    if sel.is_all() {
        return Ok(cfg);
    }
    let head = match mirror.fetch() {
        Ok(head) => head,
        Err(e) => mirror.head().map_err(|_| e)?,
    };
    let loaded = ConfigTree::from_git(&mirror.path, &head.to_string())
        .map_err(|e| e.to_string())
        .and_then(|t| crate::model::load(&t).map_err(|d| d.to_string()));
    let fleet = match loaded {
        Ok(f) => f,
        // An invalid head is reported as such once the daemon runs.
        Err(e) => {
            warn!(commit = %head, "cannot check {} at the branch's head: {e}", sel.describe());
            return Ok(cfg);
        }
    };
    cfg.hosts = sel.select(&fleet).map_err(|e| {
        DaemonError::Hosts(format!(
            "{} (at {}): {}; nothing would be reconciled",
            e.message,
            &head.to_string()[..7],
            e.help
        ))
    })?;
    cfg.labels.clear();
    info!(hosts = %cfg.hosts.join(","), "reconciling only {}", sel.describe());
    Ok(cfg)
}

/// The daemon on `listener` until `shutdown` completes. The listener, the
/// shutdown and the clock come from the caller (a test binds 127.0.0.1:0,
/// runs on a virtual clock and stops it when it is done); `started` gets the
/// shared state once it exists.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    clock: Clock,
    cfg: Config,
    started: impl FnOnce(Arc<Shared>),
) -> Result<(), DaemonError> {
    check_secrets(&cfg)?;
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
    let cfg = choose_hosts(cfg, &mirror)?;
    let sched = Arc::new(Scheduler::default());
    let (shared, record) = open_shared(&cfg, sched.clone(), clock.clone());
    let addr = listener.local_addr().map_err(|e| DaemonError::Listen {
        addr: cfg.listen,
        reason: e.to_string(),
    })?;
    info!(%addr, repo = %cfg.repo, branch = %cfg.branch, "tidekeeper daemon listening");
    let app = http::router(shared.clone());
    let server = tokio::spawn(http::serve(listener, app, http::Limits::from_env()));
    let _watcher = if cfg.watch {
        triggers::watch(&cfg.repo, &cfg.branch, shared.clone())
    } else {
        None
    };
    started(shared.clone());
    let stop = Arc::new(Notify::new());
    let lp = Loop::new(
        cfg,
        clock,
        shared.clone(),
        mirror,
        sched,
        record,
        stop.clone(),
    );
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
    shared.notifier.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drift_check_hashes_every_file_first_and_then_once_per_full_check_interval() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .to_utc();
        let day = Duration::from_secs(86_400);
        assert!(full_check_due(None, t0, day), "the first one is full");
        let later = |s: i64| t0 + chrono::Duration::seconds(s);
        assert!(!full_check_due(Some(t0), later(600), day));
        assert!(!full_check_due(Some(t0), later(86_399), day));
        assert!(full_check_due(Some(t0), later(86_400), day));
        // A clock set back does not postpone it for ever.
        assert!(!full_check_due(Some(t0), later(-60), day));
    }
}
