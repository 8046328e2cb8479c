//! Planning a proposal is untrusted computation: its YAML, templates, Rego
//! and `count` are written by whoever opened the pull request. It runs in a
//! worker process — this binary's hidden `proposal-worker` command — with an
//! empty environment, rlimits (address space, CPU seconds, open files), a
//! wall-clock deadline and a cap on what it may print. Whatever the proposal
//! makes it do, the daemon gets a verdict: a plan, or "not planned: exceeded
//! its 1024 MiB memory limit".
//!
//! The worker holds the SSH key (it probes hosts read-only, as the base
//! allows) and nothing else: no cloud, forge or webhook credential, no age
//! identity. The daemon observes the clouds and hands the worker a snapshot.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{self, HostResult};
use crate::model::desired::{Fleet, ProposalLimits};
use crate::reconcile;
use crate::source::ConfigTree;

/// The hidden subcommand the daemon starts.
pub const COMMAND: &str = "proposal-worker";

/// A report owed to the forge for a planned head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub state: String,
    pub description: String,
    /// The plan comment, or its first part.
    pub comment: String,
    /// Its other parts, when the plan is too long for one comment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
    pub context: String,
    pub marker: String,
}

/// The plan reviewed on a proposal: what its merge is compared with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reviewed {
    /// The tree of the planned head.
    pub tree: String,
    pub digest: String,
    /// `host action kind id`, one per change.
    pub lines: Vec<String>,
}

/// What the worker is asked to plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The daemon's git mirror, read only.
    pub mirror: PathBuf,
    pub base_commit: String,
    /// The proposal ref and its head.
    pub name: String,
    pub head: String,
    /// Only these hosts (the daemon's `--host`), or all.
    pub hosts: Option<Vec<String>>,
    pub ssh_key: Option<String>,
    /// What the clouds held when the daemon looked (None: no cloud hosts,
    /// or the daemon could not see them: `cloud_error`).
    pub cloud: Option<crate::cloud::CloudSnapshot>,
    pub cloud_error: Option<String>,
    /// The budgets of one proposal (from the base's tidekeeper.yaml).
    pub limits: ProposalLimits,
}

/// The plan of one proposal head: the note for its commit, the report for
/// the forge (when the base configures one), the reviewed plan, the commit
/// status it earns, what alerts need, and what the dashboard shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Planned {
    /// The note on the head commit: the comment's markdown and the plan's
    /// JSON (plain text when nothing was planned).
    pub note: String,
    pub report: Option<Report>,
    pub reviewed: Option<Reviewed>,
    /// The commit status (success, failure, error) and why.
    pub verdict: (String, String),
    /// Denials and policy errors, for the policy alert.
    pub denials: Vec<String>,
    /// Currency → the proposed monthly cost, where the proposal raises it.
    pub raised_cost: BTreeMap<String, f64>,
    /// The dashboard's: the plan as text with its diffs (as `plan` prints
    /// it, without colour), empty when nothing was planned.
    #[serde(default)]
    pub text: String,
    /// The policies' warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The cost table: the servers whose price changes, the fleet's totals.
    #[serde(default)]
    pub cost: Vec<crate::cloud::plan::CostRow>,
    /// Why there is no plan, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplanned: Option<Unplanned>,
}

/// Why a proposal head has no plan: the short reason (`invalid config`,
/// `exceeded its 60 s deadline`) and what more there is to say (the
/// config's errors, one a line).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Unplanned {
    pub why: String,
    #[serde(default)]
    pub details: String,
}

impl Planned {
    /// A head that was not planned, and why: its note, status and comment.
    /// A head whose config does not load: its errors (redacted) are the note.
    fn invalid(name: &str, sha: &str, errors: &[String], report: Option<Report>) -> Planned {
        Planned {
            note: format!(
                "tidekeeper plan for {name} at {sha}: invalid config\n\n{}\n",
                errors.join("\n")
            ),
            report,
            reviewed: None,
            verdict: ("failure".into(), "invalid config".into()),
            denials: vec![],
            raised_cost: BTreeMap::new(),
            text: String::new(),
            warnings: vec![],
            cost: vec![],
            unplanned: Some(Unplanned {
                why: "invalid config".into(),
                details: errors.join("\n"),
            }),
        }
    }

    pub fn not_planned(name: &str, head: &str, fleet: &str, why: &str, forge: bool) -> Planned {
        let marker = crate::report::marker(fleet);
        let desc = format!("not planned: {why}");
        Planned {
            note: format!("tidekeeper plan for {name} at {head}: {desc}\n"),
            report: forge.then(|| Report {
                state: "error".into(),
                description: desc.clone(),
                comment: format!(
                    "{marker}\n**Not planned**: {}\n\nPush a new commit to plan again.\n",
                    crate::report::md_text(why)
                ),
                more: vec![],
                context: format!("tidekeeper/{fleet}/plan"),
                marker,
            }),
            reviewed: None,
            verdict: ("error".into(), desc),
            denials: vec![],
            raised_cost: BTreeMap::new(),
            text: String::new(),
            warnings: vec![],
            cost: vec![],
            unplanned: Some(Unplanned {
                why: why.to_string(),
                details: String::new(),
            }),
        }
    }
}

/// Run the worker for `job` and wait for its verdict, within `limits`. An
/// `Err` is why the head was not planned, in words for its reviewers.
pub async fn plan(exe: &Path, job: &Job) -> Result<Planned, String> {
    let limits = job.limits.clone();
    let input = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(COMMAND)
        .env_clear()
        // The probe of a local host runs sh; nothing else is inherited.
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        // Few malloc arenas: each reserves address space the limit counts.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let (memory, cpu, files) = (limits.memory_bytes, limits.cpu_secs, limits.open_files);
    // SAFETY: between fork and exec only async-signal-safe calls: setrlimit.
    unsafe {
        cmd.pre_exec(move || {
            for (res, v) in [
                (libc::RLIMIT_AS, memory),
                (libc::RLIMIT_CPU, cpu),
                (libc::RLIMIT_NOFILE, files),
                (libc::RLIMIT_CORE, 0),
            ] {
                let l = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                if libc::setrlimit(res, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("the planning worker could not start: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let cap = limits.output_bytes;
    let work = async {
        let feed = async {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let out = async {
            let mut buf = Vec::new();
            let _ = (&mut stdout)
                .take(cap as u64 + 1)
                .read_to_end(&mut buf)
                .await;
            buf
        };
        let err = async {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
            buf
        };
        let ((), out, err) = tokio::join!(feed, out, err);
        (out, err)
    };
    let deadline = Duration::from_secs(limits.deadline_secs);
    let (out, err) = match tokio::time::timeout(deadline, work).await {
        Ok(x) => x,
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!("exceeded its {} s deadline", limits.deadline_secs));
        }
    };
    if out.len() > cap {
        let _ = child.kill().await;
        return Err(format!("its output exceeded the {} MiB limit", cap >> 20));
    }
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = child.kill().await;
            return Err(format!("exceeded its {} s deadline", limits.deadline_secs));
        }
    };
    if status.success()
        && let Ok(p) = serde_json::from_slice::<Planned>(&out)
    {
        return Ok(p);
    }
    Err(death(status, &String::from_utf8_lossy(&err), &limits))
}

/// Why a worker died, in the words of the limit it met.
fn death(status: std::process::ExitStatus, stderr: &str, limits: &ProposalLimits) -> String {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    let memory = stderr.contains("memory allocation of")
        || stderr.contains("out of memory")
        || stderr.contains("Cannot allocate memory");
    if memory {
        return format!(
            "exceeded its {} MiB memory limit",
            limits.memory_bytes >> 20
        );
    }
    if signal == Some(libc::SIGXCPU) || (signal == Some(libc::SIGKILL) && !memory) {
        return format!("exceeded its {} s CPU limit", limits.cpu_secs);
    }
    // The worker's own words, one line, cut: never raw text into a comment.
    let last: String = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    match (status.code(), signal) {
        (Some(c), _) => format!("the planning worker exited with {c}: {last}"),
        (None, Some(s)) => format!("the planning worker was killed by signal {s}: {last}"),
        _ => format!("the planning worker failed: {last}"),
    }
}

/// The worker's side: read a [`Job`] on stdin, plan it, print [`Planned`]
/// as JSON. Its stderr is read by the daemon only to name a failure.
pub fn main() -> std::process::ExitCode {
    let mut input = Vec::new();
    if std::io::stdin()
        .take(16 << 20)
        .read_to_end(&mut input)
        .is_err()
    {
        return std::process::ExitCode::from(2);
    }
    let job: Job = match serde_json::from_slice(&input) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("proposal-worker: bad job: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // One thread: fewer stacks and arenas under the address-space limit.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let planned = rt.block_on(plan_job(&job));
    match planned {
        Ok(p) => {
            println!("{}", serde_json::to_string(&p).expect("json"));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proposal-worker: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The same planning without the process boundary or its limits: what the
/// worker does inside, for the benchmark that measures what the boundary
/// costs. Never call it on a proposal in the daemon.
pub async fn plan_in_process(job: &Job) -> Result<Planned, String> {
    plan_job(job).await
}

/// The tree of commit `sha` in the mirror: what a merge is matched by.
fn tree_of(mirror: &Path, sha: &str) -> Option<String> {
    let r = git2::Repository::open_bare(mirror)
        .or_else(|_| git2::Repository::open(mirror))
        .ok()?;
    let oid = git2::Oid::from_str(sha).ok()?;
    Some(r.find_commit(oid).ok()?.tree_id().to_string())
}

/// The proposed monthly cost per currency where the plan raises it.
fn raised_cost(cloud: Option<&crate::cloud::plan::CloudPlan>) -> BTreeMap<String, f64> {
    cloud
        .map(|c| {
            c.cost
                .iter()
                .filter(|(_, l)| l.delta() > 0.0)
                .map(|(cur, l)| (cur.to_string(), l.proposed))
                .collect()
        })
        .unwrap_or_default()
}

/// Plan the job's head under its base (the worker's side).
async fn plan_job(job: &Job) -> Result<Planned, String> {
    let base_tree =
        ConfigTree::from_git(&job.mirror, &job.base_commit).map_err(|e| e.to_string())?;
    // The base without its secrets: a proposal never needs them.
    let base = crate::model::load(&base_tree).map_err(|d| d.to_string())?;
    let base_policies = base_tree.policies();
    let fleet_name = base.name.clone();
    let marker = crate::report::marker(&fleet_name);
    let context = format!("tidekeeper/{fleet_name}/plan");
    let with_forge = base.settings.forge.is_some();
    let (name, sha) = (job.name.as_str(), job.head.as_str());
    let loaded = ConfigTree::from_git(&job.mirror, sha)
        .map_err(|e| vec![e.to_string()])
        .and_then(|tree| {
            let fleet = crate::model::load_within(&tree, &job.limits)
                .and_then(crate::engine::kinds::known_settings)
                .map_err(|d| super::lines(&d))?;
            Ok((fleet, tree.policies()))
        });
    let (proposal, policies) = match loaded {
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(|e| base.redact(e)).collect();
            let report = with_forge.then(|| Report {
                state: "failure".into(),
                description: "invalid config".into(),
                comment: crate::report::invalid_config(&marker, &errors),
                more: vec![],
                context: context.clone(),
                marker: marker.clone(),
            });
            return Ok(Planned::invalid(name, sha, &errors, report));
        }
        Ok(x) => x,
    };
    Ok(plan_valid(job, &base, &base_policies, proposal, &policies).await)
}

/// Plan a head whose config loads, under its base, and report it.
async fn plan_valid(
    job: &Job,
    base: &Fleet,
    base_policies: &[(String, String)],
    proposal: Fleet,
    policies: &[(String, String)],
) -> Planned {
    let fleet_name = base.name.clone();
    let marker = crate::report::marker(&fleet_name);
    let context = format!("tidekeeper/{fleet_name}/plan");
    let with_forge = base.settings.forge.is_some();
    let (name, sha) = (job.name.as_str(), job.head.as_str());
    let names = job.hosts.as_ref().map(|only| {
        proposal
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| only.contains(n))
            .collect()
    });
    let opts = engine::Options {
        parallel: base.settings.parallelism.max(1) as usize,
        ssh_key: job.ssh_key.clone(),
        redactions: base.redactions.clone(),
        ..Default::default()
    };
    let seen = match (&job.cloud, &job.cloud_error) {
        (Some(c), _) => Some(Ok(crate::cloud::Observed::from(c.clone()))),
        (None, Some(e)) => Some(Err(e.clone())),
        (None, None) => None,
    };
    let p =
        reconcile::plan_proposal(base, base_policies, proposal, policies, names, opts, seen).await;
    let (cloud, verdict, after_merge, results) =
        (p.plan.cloud.clone(), p.verdict, p.after_merge, p.plan.hosts);
    let refs: Vec<&HostResult> = results.iter().collect();
    let (digest, lines) = reconcile::plan_digest(cloud.as_ref(), &refs);
    let reviewed = tree_of(&job.mirror, sha).map(|tree| Reviewed {
        tree,
        digest: digest.clone(),
        lines,
    });
    let review = crate::report::Review {
        fleet: &fleet_name,
        commit: sha,
        cloud: cloud.as_ref(),
        results: &refs,
        verdict: &verdict,
        after_merge: &after_merge,
    };
    let proposed = crate::report::Proposed {
        name,
        base: &job.base_commit,
        digest: &digest,
    };
    let formatted = crate::report::proposal(&review, &proposed);
    let note = base.redact(&formatted.note);
    let (state, desc) = (formatted.status.0, base.redact(&formatted.status.1));
    let report = with_forge.then(|| {
        let mut parts = formatted.comments.iter().map(|p| base.redact(p));
        Report {
            state: state.into(),
            description: desc.clone(),
            comment: parts.next().unwrap_or_default(),
            more: parts.collect(),
            context,
            marker,
        }
    });
    let raised_cost = raised_cost(cloud.as_ref());
    let text = base.redact(&reconcile::text(cloud.as_ref(), &refs, false));
    Planned {
        note,
        report,
        reviewed,
        verdict: (state.to_string(), desc),
        denials: verdict
            .deny
            .iter()
            .chain(&verdict.errors)
            .cloned()
            .collect(),
        raised_cost,
        text,
        warnings: verdict.warn.clone(),
        cost: cloud
            .as_ref()
            .map(crate::cloud::plan::cost_rows)
            .unwrap_or_default(),
        unplanned: None,
    }
}
