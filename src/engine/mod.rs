//! The host engine: connect, observe in one round trip, plan (pure), apply
//! exactly that plan in one round trip, for many hosts at once.
//!
//! - [`item`]: a host's desired state flattened into items.
//! - [`kinds`]: one file per resource kind, each owning all of its phases
//!   behind the `Kind` trait, and the registry the stages go through.
//! - [`probe`]: the one-round-trip observation script and its parser.
//! - [`plan`]: desired vs observed → typed changes.
//! - [`apply`]: a plan → one script; its report → an outcome.
//! - [`guard`]: the lockout guard around risky changes.
//! - [`rekey`]: a cloud server's host key replaced by one made on the server.
//! - [`confine`]: what a proposal's plan may observe.
//! - [`render`]: plans and reports for people and machines.

pub mod apply;
pub(crate) mod compose;
pub(crate) mod confine;
pub(crate) mod facts;
pub(crate) mod guard;
pub(crate) mod health;
pub(crate) mod item;
pub(crate) mod kinds;
pub(crate) mod observed;
pub(crate) mod plan;
pub(crate) mod probe;
pub(crate) mod rekey;
pub(crate) mod render;
pub(crate) mod sh;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::model::desired::{Fleet, Host, Jump, ProviderKind, Trust};
use crate::transport::{Connection, HostKeyPolicy, Local, Ssh, SshTarget, TransportError};
use apply::Outcome;
use item::Item;
use plan::{HostPlan, PlanOptions};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("no address to connect to: {0}")]
    NoAddress(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("observing the host failed: {0}")]
    Probe(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub parallel: usize,
    pub plan: PlanOptions,
    /// Overrides the fleet's `defaults.ssh.key`.
    pub ssh_key: Option<String>,
    pub connect_timeout: Duration,
    pub probe_timeout: Duration,
    pub apply_timeout: Duration,
    /// Rolling apply: one canary host first, then `parallel` at a time,
    /// stopping at the first failure.
    pub rolling: bool,
    /// After this long without proof of access, a host rolls back a risky change.
    pub rollback_deadline: Duration,
    /// Secret values to blank out of every error and report.
    pub redactions: Vec<String>,
    /// Wall time for maintenance windows and power periods.
    pub clock: crate::clock::Clock,
    /// Hash only managed files whose stat changed since they last hashed as
    /// they should (drift checks between full checks).
    pub changed_files_only: bool,
    /// Keep each host's stat cache up to date (the daemon, whose drift
    /// checks use it).
    pub record_file_stats: bool,
    /// Where a vouch for a host's stat cache waits for the host's next
    /// probe (the daemon's); without it, it is sent at once.
    pub vouches: Option<Arc<Vouches>>,
    /// Keep a digest of what each host's probe saw in its plan (a saved
    /// plan records it; `apply FILE` refuses when it moved).
    pub digest_observed: bool,
}

/// Vouches owed to hosts' stat caches, by host: a check that found every
/// file as wanted leaves its vouch here, and the host's next check between
/// full checks runs it first, instead of a round trip of its own (on a
/// fleet, each costs a session on every host).
#[derive(Debug, Default)]
pub struct Vouches(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Vouches {
    fn put(&self, host: &str, script: Option<String>) {
        let mut owed = self.0.lock().unwrap();
        match script {
            Some(s) => owed.insert(host.to_string(), s),
            None => owed.remove(host),
        };
    }

    fn take(&self, host: &str) -> Option<String> {
        self.0.lock().unwrap().remove(host)
    }
}

impl Options {
    pub fn redact(&self, text: &str) -> String {
        crate::model::desired::redact(&self.redactions, text)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            parallel: 4,
            plan: PlanOptions::default(),
            ssh_key: None,
            connect_timeout: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(120),
            apply_timeout: Duration::from_secs(1800),
            rolling: false,
            rollback_deadline: Duration::from_secs(120),
            redactions: vec![],
            clock: Default::default(),
            changed_files_only: false,
            record_file_stats: false,
            vouches: None,
            digest_observed: false,
        }
    }
}

/// Why a host was not planned or not applied: what the daemon acts on (wait,
/// retry, quarantine) and what metrics count, without reading message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostError {
    /// No connection (refused, timed out, no route, lost).
    Unreachable,
    /// The host key is not pinned or does not match.
    HostKey,
    /// The server refused the login, or the key could not be read.
    Login,
    /// Another tidekeeper run holds the host's lock.
    Locked,
    /// A cloud server not created (or not running) yet: no address.
    NotCreated,
    /// A step of the apply failed.
    StepFailed,
    /// The lockout guard rolled a risky change back.
    RolledBack,
    /// The plan may not be applied as it stands (mass delete, planted symlink, …).
    Blocked,
    /// The host uses secrets that cannot be decrypted here.
    Secrets,
    /// Observing the host failed (the probe's output, or what it may manage).
    Probe,
    /// The cloud stage could not see or make the host's server.
    Cloud,
    /// The apply stopped without a report.
    Interrupted,
    /// A health gate failed after the apply.
    Unhealthy,
    /// Not applied: a rollout stopped at an earlier batch.
    RolloutStopped,
}

impl HostError {
    /// The label in `tidekeeper_host_errors_total{kind=…}`.
    pub fn metric_label(self) -> &'static str {
        match self {
            HostError::Unreachable => "unreachable",
            HostError::HostKey => "host_key",
            HostError::Login => "login",
            HostError::Locked => "locked",
            HostError::NotCreated => "not_created",
            HostError::StepFailed => "step_failed",
            HostError::RolledBack => "rolled_back",
            HostError::Blocked => "blocked",
            HostError::Secrets => "secrets",
            HostError::Probe => "probe",
            HostError::Cloud => "cloud",
            HostError::Interrupted => "interrupted",
            HostError::Unhealthy => "unhealthy",
            HostError::RolloutStopped => "rollout_stopped",
        }
    }

    /// Not a failure of the commit: the host is busy or not there yet; look again soon.
    pub fn is_transient(self) -> bool {
        matches!(self, HostError::Locked | HostError::NotCreated)
    }
}

impl EngineError {
    pub fn kind(&self) -> HostError {
        match self {
            EngineError::NoAddress(_) => HostError::NotCreated,
            EngineError::Unsupported(_) | EngineError::Probe(_) => HostError::Probe,
            EngineError::Transport(t) => match t {
                TransportError::Unreachable { .. }
                | TransportError::Timeout { .. }
                | TransportError::Lost { .. } => HostError::Unreachable,
                TransportError::UnknownHostKey { .. } | TransportError::HostKeyMismatch { .. } => {
                    HostError::HostKey
                }
                TransportError::AuthFailed { .. } | TransportError::Key { .. } => HostError::Login,
                TransportError::Local(_) => HostError::Unreachable,
            },
        }
    }
}

/// Where one host stands after planning (and applying).
pub struct HostResult {
    pub host: String,
    pub address: String,
    /// A known_hosts line for a key accepted on first use (not pinned before).
    pub learned_host_key: Option<String>,
    /// A known_hosts line for the key tidekeeper generated for a new cloud
    /// server, as verified on connecting (recorded, not pinned: the server's
    /// label pins it, and a replaced server gets a new one).
    pub generated_host_key: Option<String>,
    /// Why the host was not planned, when that is not an error (a cloud
    /// server not created yet, or powered off).
    pub skipped: Option<String>,
    pub plan: Option<HostPlan>,
    pub error: Option<String>,
    /// What kind of error `error` is.
    pub error_kind: Option<HostError>,
    pub outcome: Option<Outcome>,
    /// What an apply did, counted from the steps that reported success
    /// (on a failed host too); None when nothing was applied.
    pub done: Option<render::Totals>,
    pub elapsed: Duration,
}

/// What happened to a host, typed: what the daemon decides statuses,
/// retries and quarantine on, never message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOutcome {
    /// Not planned, and not an error: a server not created yet, or off.
    Skipped,
    /// Planned, nothing applied (a drift check, a proposal, `plan`).
    Planned,
    /// Applied, or nothing needed applying.
    Applied,
    /// Failed, with its kind.
    Failed(HostError),
}

impl HostResult {
    /// The typed outcome; `applying` says whether the plan was to be applied.
    pub fn outcome_kind(&self, applying: bool) -> HostOutcome {
        match (self.error_kind, &self.plan) {
            (Some(kind), _) => HostOutcome::Failed(kind),
            // An error without a kind is a bug upstream; count it as a failed step.
            (None, _) if self.error.is_some() => HostOutcome::Failed(HostError::StepFailed),
            (None, None) => HostOutcome::Skipped,
            (None, Some(_)) if applying => HostOutcome::Applied,
            (None, Some(_)) => HostOutcome::Planned,
        }
    }

    /// A host not planned (yet): no plan, no error.
    pub fn new(host: &str, address: &str) -> HostResult {
        HostResult {
            host: host.to_string(),
            address: address.to_string(),
            learned_host_key: None,
            generated_host_key: None,
            skipped: None,
            plan: None,
            error: None,
            error_kind: None,
            outcome: None,
            done: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Record a failure of `kind`.
    pub fn fail(&mut self, kind: HostError, message: impl Into<String>) {
        self.error = Some(message.into());
        self.error_kind = Some(kind);
    }
}

/// The connections of planned hosts, by host name, kept from plan to
/// apply. Owned by whoever runs a reconcile (a CLI command, a daemon
/// commit), so a plan is plain data; clones share the connections.
///
/// At most [`POOL_OPEN`] stay open: beyond that a host's connection is
/// closed after its plan and opened again for its apply, to the same
/// address with the host key seen at plan time pinned. Memory then stays
/// flat however many hosts a plan has (about 100 KB per open connection).
#[derive(Clone)]
pub struct Pool {
    held: Arc<std::sync::Mutex<std::collections::HashMap<String, Held>>>,
    open_limit: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::with_open_limit(POOL_OPEN)
    }
}

/// Connections held open at once from plan to apply.
pub const POOL_OPEN: usize = 64;

enum Held {
    Open(Connection),
    /// Closed after the plan; how to reach the host again.
    Parked(Box<SshTarget>),
}

impl Held {
    async fn close(self) {
        if let Held::Open(c) = self {
            c.close().await;
        }
    }
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A pool that keeps at most `n` connections open.
    pub fn with_open_limit(n: usize) -> Pool {
        Pool {
            held: Default::default(),
            open_limit: n,
        }
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.held
            .lock()
            .expect("pool lock")
            .values()
            .filter(|h| matches!(h, Held::Open(_)))
            .count()
    }

    async fn put(&self, host: &str, conn: Connection) {
        let to_close = {
            let mut held = self.held.lock().expect("pool lock");
            let open = held.values().filter(|h| matches!(h, Held::Open(_))).count();
            let parked = match &conn {
                Connection::Ssh(s) if open >= self.open_limit => {
                    let mut t = s.target().clone();
                    t.host_keys = HostKeyPolicy::Pinned(vec![s.host_key().clone()]);
                    Some(Held::Parked(Box::new(t)))
                }
                _ => None,
            };
            let (entry, to_close) = match parked {
                Some(p) => (p, Some(conn)),
                None => (Held::Open(conn), None),
            };
            let old = held.insert(host.to_string(), entry);
            debug_assert!(old.is_none(), "{host} planned twice in one pool");
            to_close
        };
        if let Some(c) = to_close {
            c.close().await;
        }
    }

    fn take(&self, host: &str) -> Option<Held> {
        self.held.lock().expect("pool lock").remove(host)
    }

    /// How many planned hosts have a connection waiting for their apply
    /// (open, or parked to be opened again).
    pub fn len(&self) -> usize {
        self.held.lock().expect("pool lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Close the connections of `hosts` (planned, not applied).
    pub async fn close(&self, hosts: Vec<String>) {
        for h in hosts {
            if let Some(c) = self.take(&h) {
                c.close().await;
            }
        }
    }
}

/// Progress events for a live display.
#[derive(Debug, Clone)]
pub enum Event {
    /// Work on a host begins (`planning` or `applying`).
    Started { host: String, what: &'static str },
    Planned {
        host: String,
        /// Counted as the plan's summary line counts.
        changes: render::Totals,
        elapsed: Duration,
    },
    Failed {
        host: String,
        error: String,
        elapsed: Duration,
    },
    Applied {
        host: String,
        /// The applied plan, counted as the plan and the summary count it
        /// (not the script's steps).
        changes: render::Totals,
        elapsed: Duration,
    },
    /// The cloud stage at work on a host's server.
    Server { host: String, message: String },
}

pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;

fn address_of(host: &Host) -> Result<String, EngineError> {
    if host.ssh.address == crate::model::desired::SshAddress::Private {
        return host.private_address.clone().ok_or_else(|| {
            EngineError::NoAddress(format!(
                "{} connects to its private address, which is not known yet (its server is created and attached by the cloud stage)",
                host.name
            ))
        });
    }
    match (&host.address, host.provider) {
        (Some(a), _) => Ok(a.clone()),
        (None, ProviderKind::Local) => Ok("local".into()),
        (None, p) => Err(EngineError::NoAddress(format!(
            "{} is a {p:?} server without a known address yet; it is created by the cloud stage",
            host.name
        ))),
    }
}

/// Keys pinned for a host in the config repo's known_hosts: lines naming the
/// host, its address, or `[address]:port`.
pub fn pinned_keys(fleet: &Fleet, host: &Host, addr: &SocketAddr) -> Vec<(String, String)> {
    let ip = addr.ip().to_string();
    let names = [
        host.name.clone(),
        host.address.clone().unwrap_or_default(),
        ip.clone(),
        format!("[{ip}]:{}", addr.port()),
        format!(
            "[{}]:{}",
            host.address.clone().unwrap_or_default(),
            addr.port()
        ),
    ];
    fleet
        .known_hosts
        .iter()
        .filter(|k| {
            k.hosts.iter().any(|h| {
                names.contains(h) && (addr.port() == 22 || h.starts_with('[') || h == &host.name)
            })
        })
        .map(|k| (k.key_type.clone(), k.key.clone()))
        .collect()
}

pub async fn connect(
    fleet: &Fleet,
    host: &Host,
    opts: &Options,
) -> Result<Connection, EngineError> {
    if host.provider == ProviderKind::Local && host.address.is_none() {
        return Ok(Connection::Local(Local::new(
            host.root.as_deref().unwrap_or(""),
        )));
    }
    let target = ssh_target(fleet, host, opts, 0)?;
    Ok(Connection::Ssh(Box::new(Ssh::connect(target).await?)))
}

/// How to reach `host` over SSH: its address, user, key and pinned host
/// key, and the same for each jump host on the way (`ssh.via`).
fn ssh_target(
    fleet: &Fleet,
    host: &Host,
    opts: &Options,
    depth: usize,
) -> Result<SshTarget, EngineError> {
    let address = address_of(host)?;
    let behind = |what: &str| match &host.ssh.via {
        Some(j) => format!("{what} (reached through {j})"),
        None => what.to_string(),
    };
    let addr = (address.as_str(), host.ssh.port)
        .to_socket_addrs()
        .map_err(|e| EngineError::NoAddress(behind(&format!("{address}: {e}"))))?
        .next()
        .ok_or_else(|| EngineError::NoAddress(behind(&address)))?;
    let pins = pinned_keys(fleet, host, &addr);
    // A repo pin wins; else the key generated for a cloud server; else
    // trust on first use, only when the repo says so. A key generated on the
    // server replaced the one a pin may still name: its label wins.
    let rotated = host.cloud_host_key_rotated;
    let policy = if let (true, Some(fp)) = (pins.is_empty() || rotated, &host.cloud_host_key) {
        HostKeyPolicy::Generated(fp.clone())
    } else if pins.is_empty() && host.ssh.trust_on_first_use {
        HostKeyPolicy::TrustOnFirstUse
    } else {
        HostKeyPolicy::Pinned(pins)
    };
    let key_file = opts.ssh_key.clone().or_else(|| host.ssh.key.clone());
    // Validation refuses loops; the bound keeps a bug from recursing forever.
    if depth > 8 {
        return Err(EngineError::NoAddress(format!(
            "{}: more than 8 jump hosts on the way",
            host.name
        )));
    }
    let via = match &host.ssh.via {
        None => None,
        Some(Jump::Host(name)) => {
            let jump = fleet.host(name).ok_or_else(|| {
                EngineError::NoAddress(format!(
                    "{}: jump host {name} is not in the fleet",
                    host.name
                ))
            })?;
            Some(Box::new(ssh_target(fleet, jump, opts, depth + 1)?))
        }
        Some(Jump::Address {
            user,
            address,
            port,
        }) => {
            let addr = (address.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| EngineError::NoAddress(format!("jump host {address}: {e}")))?
                .next()
                .ok_or_else(|| EngineError::NoAddress(format!("jump host {address}")))?;
            // A jump host outside the fleet is known only by its pinned key.
            let names = [
                address.clone(),
                addr.ip().to_string(),
                format!("[{address}]:{port}"),
                format!("[{}]:{port}", addr.ip()),
            ];
            let pins = fleet
                .known_hosts
                .iter()
                .filter(|k| {
                    k.hosts
                        .iter()
                        .any(|h| names.contains(h) && (*port == 22 || h.starts_with('[')))
                })
                .map(|k| (k.key_type.clone(), k.key.clone()))
                .collect();
            Some(Box::new(SshTarget {
                name: format!("jump host {address}"),
                addr,
                user: user.clone(),
                key_file: key_file.clone(),
                host_keys: HostKeyPolicy::Pinned(pins),
                sudo: false,
                connect_timeout: opts.connect_timeout,
                via: None,
            }))
        }
    };
    Ok(SshTarget {
        name: host.name.clone(),
        addr,
        user: host.ssh.user.clone(),
        key_file,
        host_keys: policy,
        sudo: host.ssh.sudo && host.ssh.user != "root",
        connect_timeout: opts.connect_timeout,
        via,
    })
}

/// Does the host's desired state carry secret values (placeholders when
/// they could not be decrypted)?
fn uses_secrets(host: &Host) -> bool {
    let placeholder = crate::model::desired::SENSITIVE.as_bytes();
    let has = |c: &crate::model::desired::Content| {
        c.sensitive && c.bytes.windows(placeholder.len()).any(|w| w == placeholder)
    };
    host.resources.iter().any(|r| match r {
        crate::model::desired::Resource::File(f) => has(&f.content),
        crate::model::desired::Resource::Stack(st) => st.files.values().any(has),
        _ => false,
    })
}

/// The known_hosts line of the key accepted under `policy` (first use, or
/// generated for a cloud server); None for pinned keys.
fn accepted_key(c: &Connection, generated: bool) -> Option<String> {
    let Connection::Ssh(ssh) = c else { return None };
    let matches = match ssh.target().host_keys {
        HostKeyPolicy::TrustOnFirstUse => !generated,
        HostKeyPolicy::Generated(_) => generated,
        HostKeyPolicy::Pinned(_) => false,
    };
    if !matches {
        return None;
    }
    let (kind, key) = ssh.host_key();
    let a = ssh.target().addr;
    let pattern = if a.port() == 22 {
        a.ip().to_string()
    } else {
        format!("[{}]:{}", a.ip(), a.port())
    };
    Some(format!("{pattern} {kind} {key}"))
}

/// Resource kinds that cannot be confined to a directory: each kind says.
fn check_local_root(host: &Host, items: &[Item], conn: &Connection) -> Result<(), EngineError> {
    if conn.root().is_empty() {
        return Ok(());
    }
    if let Some(i) = items.iter().find(|i| !i.kind_impl().under_root()) {
        let can: Vec<String> = kinds::KINDS
            .iter()
            .filter(|k| k.under_root())
            .map(|k| match k.setting() {
                Some(name) => format!("setting {name}"),
                None => k.kind().to_string(),
            })
            .collect();
        return Err(EngineError::Unsupported(format!(
            "{} manages {} {}, which cannot be confined to the local root {}; \
             only these can: {}",
            host.name,
            i.kind(),
            i.id(),
            conn.root(),
            can.join(", ")
        )));
    }
    Ok(())
}

/// Observe one host and plan it.
pub async fn plan_host(
    conn: &Connection,
    host: &Host,
    opts: &Options,
) -> Result<HostPlan, EngineError> {
    let mut items = kinds::items(host);
    check_local_root(host, &items, conn)?;
    // A proposal's host is observed only where the trusted base looks.
    let (probed, unobserved) = match &host.trust {
        Trust::Full => (items.clone(), None),
        Trust::Confined(c) => {
            let (p, u) = confine::split(&mut items, c);
            (p, Some(u))
        }
        Trust::AfterMerge(why) => return Err(EngineError::Unsupported(why.clone())),
    };
    // The stat cache is kept where it is used: by the daemon (and plans of
    // changed files only). A proposal's plan leaves no trace on a host.
    let trusted = matches!(host.trust, Trust::Full);
    let mut content = probe::ContentCheck {
        changed_only: opts.changed_files_only,
        record: opts.record_file_stats && trusted,
        // Between full checks, a record of settled files stands in for
        // statting and hashing every file; when it cannot, probe in full.
        settled: opts.changed_files_only && trusted,
    };
    // A vouch owed from the last check goes first: its record is used at once.
    let owed = match &opts.vouches {
        Some(v) if content.settled => v.take(&host.name),
        _ => None,
    };
    let mut obs = probe_once(conn, &probed, content, opts, owed.as_deref()).await?;
    if obs.settled == probe::Settled::Miss {
        content.settled = false;
        obs = probe_once(conn, &probed, content, opts, None).await?;
    }
    if let probe::Settled::Hit { moved } = obs.settled {
        tracing::debug!(host = %host.name, moved, "the record of settled files stood in for the rest");
        // Files that moved but are as wanted (touched, restored) would be
        // hashed by every check until the next full one: record them again.
        if moved > 0 && content.record && files_as_wanted(&probed, &obs) {
            content.settled = false;
            obs = probe_once(conn, &probed, content, opts, None).await?;
        }
    }
    let mut plan = plan::plan_host(host, &items, &obs, opts.plan);
    if opts.digest_observed {
        plan.observed = Some(obs.digest());
    }
    if let Some(u) = unobserved {
        confine::annotate(&mut plan, &u);
    }
    // Every file as wanted, with the stat just recorded: vouch for it, so
    // the checks until the next full one stat the files and send no path.
    let vouch = match &obs.recorded {
        Some(recorded) if content.record && files_as_wanted(&probed, &obs) => {
            Some(kinds::file::settle(&probed, conn.root(), recorded))
        }
        _ => None,
    };
    if let Some(v) = &opts.vouches {
        if obs.recorded.is_some() {
            v.put(&host.name, vouch);
        }
    } else if let Some(script) = vouch {
        match conn.run_script(&script, opts.probe_timeout).await {
            Ok(out) if out.success() => {}
            Ok(out) => {
                tracing::debug!(host = %host.name, err = %out.stderr_text(), "the stat cache changed before it was vouched for")
            }
            Err(e) => {
                tracing::debug!(host = %host.name, error = %e, "cannot vouch for the stat cache")
            }
        }
    }
    Ok(plan)
}

/// Every managed file is as the config wants it (content, mode, owner, group).
fn files_as_wanted(items: &[Item], obs: &probe::Observed) -> bool {
    items.iter().all(|i| match i {
        Item::File(f) => matches!(kinds::file::plan(f, obs), Ok(None)),
        _ => true,
    })
}

/// Run the probe once (after `first`, a vouch owed) and read what it saw.
async fn probe_once(
    conn: &Connection,
    items: &[Item],
    content: probe::ContentCheck,
    opts: &Options,
    first: Option<&str>,
) -> Result<probe::Observed, EngineError> {
    let script = probe::script_after(items, conn.root(), content, first.unwrap_or(""));
    let out = conn.run_script(&script, opts.probe_timeout).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    probe::parse(&text, conn.root(), items).map_err(|e| {
        let err = out.stderr_text();
        EngineError::Probe(if err.is_empty() {
            e.to_string()
        } else {
            format!("{e}: {err}")
        })
    })
}

/// `host` rendered again with the facts it has, when its templates read
/// any (None: they read none, so loading rendered it as it is). The facts
/// are asked for in a round trip of their own, before the probe that
/// depends on what they render.
async fn with_facts(
    conn: &Connection,
    fleet: &Fleet,
    host: &Host,
    opts: &Options,
) -> Result<Option<Host>, EngineError> {
    if host.facts_used.is_empty() {
        return Ok(None);
    }
    let script = format!("{}{}", sh::probe_prelude(conn.root()), facts::probe());
    let out = conn.run_script(&script, opts.probe_timeout).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let records = text.lines().filter_map(|l| {
        let (tag, rest) = l.split_once('\t')?;
        (sh::Tag::parse(tag) == Some(sh::Tag::Fact)).then_some(rest)
    });
    let Some(facts) = facts::read(records) else {
        return Err(EngineError::Probe(format!(
            "the host told none of its facts, which its templates read ({}): {}",
            host.facts_used.join(", "),
            out.stderr_text()
        )));
    };
    crate::model::render_with_facts(fleet, &host.name, &facts)
        .map(Some)
        .map_err(|e| {
            EngineError::Unsupported(format!(
                "the config does not render with the facts of {}: {e}",
                host.name
            ))
        })
}

/// A host planned against an empty machine, without contacting it: what a
/// new server (or a proposal's new host) will get.
pub fn preview(host: &Host, address: &str, why: &str, opts: &Options) -> HostResult {
    let items = kinds::items(host);
    let mut r = HostResult::new(&host.name, address);
    let mut p = plan::plan_host(host, &items, &probe::Observed::default(), opts.plan);
    p.warnings.push(why.to_string());
    if !host.facts_used.is_empty() && host.facts.is_none() {
        // Rendered with stand-ins: say so rather than pass them off as content.
        p.warnings.push(format!(
            "facts unknown: this plan was made without connecting to {}, and its templates \
             read facts.{}; content that depends on them is shown with stand-ins (\"\", 0) and \
             is rendered with the host's real facts when it is planned connected",
            host.name,
            host.facts_used.join(", facts.")
        ));
    }
    r.plan = Some(p);
    r
}

fn run_id() -> String {
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id()
    )
}

/// Plan every selected host, in parallel, keeping the connections open in
/// `pool` for the apply.
pub async fn plan_all(
    fleet: Arc<Fleet>,
    hosts: Vec<String>,
    opts: Arc<Options>,
    progress: Progress,
    pool: &Pool,
) -> Vec<HostResult> {
    let sem = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let mut tasks = Vec::new();
    for name in hosts {
        let (fleet, opts, sem, progress, pool) = (
            fleet.clone(),
            opts.clone(),
            sem.clone(),
            progress.clone(),
            pool.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let start = Instant::now();
            progress(Event::Started {
                host: name.clone(),
                what: "planning",
            });
            let host = fleet.host(&name).expect("selected host exists");
            let address = address_of(host).unwrap_or_else(|_| "-".into());
            let mut result = HostResult::new(&name, &address);
            if let Trust::AfterMerge(why) = &host.trust {
                result = preview(host, "-", why, &opts);
                if let Some(p) = result.plan.as_mut() {
                    confine::new_host(p, &kinds::items(host));
                }
            } else if !fleet.secrets_decrypted
                && matches!(host.trust, Trust::Full)
                && uses_secrets(host)
            {
                result.fail(
                    HostError::Secrets,
                    format!(
                        "{} uses secrets, but they cannot be decrypted: no age identity \
                         (set {} or secrets.identity_file in tidekeeper.yaml)",
                        host.name, fleet.settings.secrets_identity_env
                    ),
                );
            } else {
                match connect(&fleet, host, &opts).await {
                    Err(e) => result.fail(e.kind(), e.to_string()),
                    Ok(c) => {
                        result.learned_host_key = accepted_key(&c, false);
                        result.generated_host_key = accepted_key(&c, true);
                        let planned = match with_facts(&c, &fleet, host, &opts).await {
                            Ok(h) => plan_host(&c, h.as_ref().unwrap_or(host), &opts).await,
                            Err(e) => Err(e),
                        };
                        match planned {
                            // Nothing to apply: the connection is not held
                            // while hundreds of other hosts are planned.
                            Ok(p) if !p.has_changes() => {
                                result.plan = Some(p);
                                c.close().await;
                            }
                            Ok(p) => {
                                result.plan = Some(p);
                                pool.put(&name, c).await;
                            }
                            Err(e) => {
                                result.fail(e.kind(), e.to_string());
                                c.close().await;
                            }
                        }
                    }
                }
            }
            result.error = result.error.map(|e| opts.redact(&e));
            result.elapsed = start.elapsed();
            progress(match (&result.plan, &result.error) {
                (_, Some(e)) => Event::Failed {
                    host: name.clone(),
                    error: e.clone(),
                    elapsed: result.elapsed,
                },
                (Some(p), None) => Event::Planned {
                    host: name.clone(),
                    changes: render::Totals::of(p),
                    elapsed: result.elapsed,
                },
                (None, None) => unreachable!("a host is planned or failed"),
            });
            result
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("plan task"));
    }
    out
}

async fn apply_one(
    mut p: HostResult,
    conn: Option<Held>,
    opts: &Options,
    run: &str,
    progress: &Progress,
) -> HostResult {
    let conn = match conn {
        None => return p,
        Some(Held::Open(c)) => c,
        Some(Held::Parked(target)) => match Ssh::connect(*target).await {
            Ok(s) => Connection::Ssh(Box::new(s)),
            Err(e) => {
                p.fail(
                    HostError::Unreachable,
                    opts.redact(&format!("cannot connect again to apply: {e}")),
                );
                return p;
            }
        },
    };
    // The plan is read while the result is written: taken out meanwhile.
    if let Some(plan) = p.plan.take() {
        apply_with(&mut p, &plan, &conn, opts, run, progress).await;
        p.plan = Some(plan);
    }
    conn.close().await;
    p
}

async fn apply_with(
    p: &mut HostResult,
    plan: &HostPlan,
    conn: &Connection,
    opts: &Options,
    run: &str,
    progress: &Progress,
) {
    if !plan.blocked.is_empty() {
        p.fail(
            HostError::Blocked,
            format!("not applied: {}", plan.blocked.join("; ")),
        );
        return;
    }
    if !plan.has_changes() {
        return;
    }
    let start = Instant::now();
    progress(Event::Started {
        host: p.host.clone(),
        what: "applying",
    });
    let guard = match conn {
        crate::transport::Connection::Ssh(s) => Some(apply::GuardSettings {
            login_user: s.target().user.clone(),
            deadline_secs: opts.rollback_deadline.as_secs().max(1),
        }),
        crate::transport::Connection::Local(_) => None,
    };
    let script = apply::script(plan, conn.root(), run, guard.as_ref());
    let mut armed = false;
    let mut outcome = match conn.run_script(&script.text, opts.apply_timeout).await {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            armed = apply::armed(&stdout);
            apply::read_report(&stdout, &out.stderr_text(), &script.steps)
        }
        Err(e) => {
            p.error = Some(format!("apply interrupted: {e}"));
            p.error_kind = Some(HostError::Unreachable);
            Outcome::Interrupted { completed: 0 }
        }
    };
    if armed
        && let Some(g) = &guard
        && let Some(lost) = prove_access(plan, conn, opts, run, g).await
    {
        p.fail(HostError::RolledBack, lost);
        outcome = Outcome::Interrupted { completed: 0 };
    }
    report_outcome(p, plan, &script.steps, outcome, opts, start, progress);
}

/// Prove access with a NEW connection after a risky change; only that
/// disarms the rollback. `Some`: why access is lost, and how the host
/// gets (or got) back to the previous state.
async fn prove_access(
    plan: &HostPlan,
    conn: &Connection,
    opts: &Options,
    run: &str,
    g: &apply::GuardSettings,
) -> Option<String> {
    let risky = guard::risky(plan, &g.login_user).join(", ");
    let proof = async {
        let fresh = conn.reconnect().await?;
        let out = fresh
            .run_script(&guard::disarm_script(run), Duration::from_secs(30))
            .await;
        fresh.close().await;
        out
    };
    let limit = opts
        .rollback_deadline
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    let mut already = false;
    let why = match tokio::time::timeout(limit, proof).await {
        Ok(Ok(out)) if out.success() => return None,
        Ok(Ok(out)) if String::from_utf8_lossy(&out.stdout).contains("rolled-back") => {
            already = true;
            "the host had already rolled back (the proof came too late)".to_string()
        }
        Ok(Ok(out)) => format!("the access check failed: {}", out.stderr_text()),
        Ok(Err(e)) => format!("a new connection failed: {e}"),
        Err(_) => format!("no new connection within {limit:?}"),
    };
    // The session the change went through is still open: restore now
    // rather than leave the host shut until the timer fires.
    let now = !already
        && matches!(
            conn.run_script(&guard::rollback_now_script(run), Duration::from_secs(30)).await,
            Ok(out) if out.success()
        );
    let when = if already {
        "the host is back to the previous state".to_string()
    } else if now {
        "the previous state was restored at once".to_string()
    } else {
        format!(
            "the host restores the previous state by itself within {}s of the change",
            g.deadline_secs
        )
    };
    Some(format!(
        "rolled back: access lost after change ({risky}); {why}; {when}"
    ))
}

/// Record how the apply went: what was done (from what the host reported,
/// never from the plan alone), the progress event, and the host's error.
fn report_outcome(
    p: &mut HostResult,
    plan: &HostPlan,
    steps: &[apply::Step],
    outcome: Outcome,
    opts: &Options,
    start: Instant,
    progress: &Progress,
) {
    // Counted from what the host reported done, never from the plan alone
    // (a rolled-back run did nothing that stayed).
    p.done = Some(match &outcome {
        Outcome::Done { .. } => render::Totals::of(plan),
        Outcome::Failed { completed, .. } | Outcome::Interrupted { completed } => {
            apply::done(plan, steps, *completed)
        }
        Outcome::Locked => render::Totals::default(),
    });
    match &outcome {
        Outcome::Done { .. } => progress(Event::Applied {
            host: p.host.clone(),
            changes: render::Totals::of(plan),
            elapsed: start.elapsed(),
        }),
        Outcome::Failed {
            what,
            error,
            completed,
            ..
        } => {
            let e = opts.redact(&format!(
                "{what}: {error}\n(stopped at this step; {completed} earlier step{} done, later ones not run)",
                if *completed == 1 { "" } else { "s" }
            ));
            progress(Event::Failed {
                host: p.host.clone(),
                error: e.clone(),
                elapsed: start.elapsed(),
            });
            p.fail(HostError::StepFailed, e);
        }
        Outcome::Locked => p.fail(
            HostError::Locked,
            "another tidekeeper run holds this host's lock (/var/lib/tidekeeper/lock); not applied",
        ),
        Outcome::Interrupted { completed } if p.error.is_none() => p.fail(
            HostError::Interrupted,
            format!(
                "the apply stopped without a report after {completed} steps (connection lost or host crashed)"
            ),
        ),
        Outcome::Interrupted { .. } => {}
    }
    p.outcome = Some(outcome);
    p.elapsed += start.elapsed();
}

/// Apply planned hosts with their connections from `pool`: in parallel up
/// to `parallel`, or rolling (canary first, then batches, stopping at the
/// first failure). Hosts without a connection pass through as they are.
pub async fn apply_all(
    planned: Vec<HostResult>,
    pool: &Pool,
    opts: Arc<Options>,
    progress: Progress,
) -> Vec<HostResult> {
    let run = Arc::new(run_id());
    let mut results = Vec::new();
    let mut queue: std::collections::VecDeque<HostResult> = planned.into();
    let mut failed = false;
    let mut first = opts.rolling;
    while !queue.is_empty() {
        let batch = if first {
            1
        } else if opts.rolling {
            opts.parallel.max(1)
        } else {
            queue.len()
        };
        first = false;
        let sem = Arc::new(Semaphore::new(opts.parallel.max(1)));
        let mut tasks = Vec::new();
        for mut p in queue.drain(..batch.min(queue.len())) {
            let conn = pool.take(&p.host);
            if failed {
                if let Some(c) = conn {
                    c.close().await;
                }
                p.error
                    .get_or_insert_with(|| "not applied: an earlier host failed (rolling)".into());
                results.push(p);
                continue;
            }
            let (opts, sem, run, progress) =
                (opts.clone(), sem.clone(), run.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                apply_one(p, conn, &opts, &run, &progress).await
            }));
        }
        for t in tasks {
            let p = t.await.expect("apply task");
            if opts.rolling && p.error.is_some() {
                failed = true;
            }
            results.push(p);
        }
    }
    results
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    /// A plan made without a connection says which facts it does not know.
    #[test]
    fn a_preview_of_a_host_whose_templates_read_facts_says_they_are_unknown() {
        let mut t = crate::source::ConfigTree::default();
        for (p, text) in [
            ("tidekeeper.yaml", "fleet: acme\n"),
            (
                "hosts/db.yaml",
                "provider: existing\naddress: 192.0.2.7\nroles: [r]\n",
            ),
            (
                "roles/r.yaml",
                "files:\n  - {path: /etc/a, template: a.j2}\n",
            ),
            ("templates/a.j2", "{{ facts.cpus }} {{ facts.arch }}\n"),
        ] {
            t.insert_file(p, text);
        }
        let fleet = crate::model::load(&t).expect("loads");
        let r = preview(
            fleet.host("db").unwrap(),
            "-",
            "new server",
            &Options::default(),
        );
        let w = r.plan.unwrap().warnings.join("\n");
        assert!(
            w.contains("facts unknown") && w.contains("facts.arch, facts.cpus"),
            "{w}"
        );
    }

    #[test]
    fn a_host_outcome_comes_from_the_error_kind_and_the_plan_never_from_text() {
        let mut r = HostResult::new("web-1", "10.0.0.5");
        assert_eq!(r.outcome_kind(true), HostOutcome::Skipped);
        r.skipped = Some("its server is off".into());
        assert_eq!(r.outcome_kind(false), HostOutcome::Skipped);
        // Text that reads like another kind changes nothing: the kind decides.
        r.fail(HostError::Locked, "cannot reach the host: failed");
        assert_eq!(r.outcome_kind(true), HostOutcome::Failed(HostError::Locked));
        r.error_kind = None;
        assert_eq!(
            r.outcome_kind(true),
            HostOutcome::Failed(HostError::StepFailed),
            "an error is never taken for success"
        );
    }
}
