//! Running one maintenance job over its hosts: window checked before each
//! host, hosts in rolling batches, a reboot waited out, health gates after
//! each host, stop on the first failure when asked.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::plan::{health_script, host_script, window_refusal};
use crate::cloud::{self, Clouds};
use crate::engine::{self, Options};
use crate::model::desired::{Fleet, Host, Job, JobKind};
use crate::transport::Connection;

/// How a job went on one host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostRunResult {
    Ok,
    Failed,
    /// Not run there: an earlier host failed, or the window was closing.
    Skipped,
}

impl HostRunResult {
    pub fn word(self) -> &'static str {
        match self {
            HostRunResult::Ok => "ok",
            HostRunResult::Failed => "failed",
            HostRunResult::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostRun {
    pub host: String,
    pub result: HostRunResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub rebooted: bool,
    pub duration_ms: u64,
    /// The last lines the job printed on the host.
    #[serde(default)]
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRun {
    pub job: String,
    pub kind: String,
    pub started: String,
    pub finished: String,
    pub ok: bool,
    /// Why the job did not start at all (window closed or closing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_started: Option<String>,
    pub hosts: Vec<HostRun>,
}

impl HostRun {
    /// A run on `host` that has not succeeded (yet).
    fn failed(host: &str) -> HostRun {
        HostRun {
            host: host.to_string(),
            result: HostRunResult::Failed,
            error: None,
            rebooted: false,
            duration_ms: 0,
            log_tail: vec![],
        }
    }

    fn finish(mut self, result: Result<(), String>, start: Instant, opts: &Options) -> HostRun {
        match result {
            Ok(()) => self.result = HostRunResult::Ok,
            Err(e) => self.error = Some(opts.redact(&e)),
        }
        self.duration_ms = start.elapsed().as_millis() as u64;
        self
    }
}

/// The health gates after a job on `host`: the job's, and those of the host's stacks.
fn gates(job: &Job, host: &Host) -> Vec<crate::model::desired::HealthCheck> {
    let mut gates = job.health.clone();
    for r in &host.resources {
        if let crate::model::desired::Resource::Stack(st) = r {
            gates.extend(st.health.iter().cloned());
        }
    }
    gates
}

fn tail(out: &crate::transport::Output, opts: &Options) -> Vec<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("@@"))
        .map(|l| opts.redact(l))
        .collect();
    lines[lines.len().saturating_sub(20)..].to_vec()
}

async fn boot_id(c: &Connection) -> Option<String> {
    let out = c
        .run_script(
            "cat /proc/sys/kernel/random/boot_id",
            Duration::from_secs(20),
        )
        .await
        .ok()?;
    out.success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One host: the job, a reboot if it asks for one, then the health gates.
async fn on_host(fleet: &Fleet, job: &Job, host_name: &str, opts: &Options) -> HostRun {
    let start = Instant::now();
    let mut run = HostRun::failed(host_name);
    let timeout = Duration::from_secs(job.timeout_secs.max(1));
    let result: Result<(), String> = async {
        let host = fleet.host(host_name).ok_or("the host left the config")?;
        let script = host_script(job, host_name, &fleet.secret_values.0)?;
        let conn = engine::connect(fleet, host, opts).await.map_err(|e| e.to_string())?;
        let out = conn.run_script(&script, timeout).await.map_err(|e| e.to_string())?;
        run.log_tail = tail(&out, opts);
        if !out.success() {
            conn.close().await;
            return Err(format!(
                "exited with {}: {}",
                out.status.map(|s| s.to_string()).unwrap_or_else(|| "no status".into()),
                opts.redact(&out.stderr_text()).lines().last().unwrap_or("")
            ));
        }
        let mut conn = conn;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if stdout.lines().any(|l| l == "@@reboot") {
            // The script named the boot it ran in; a reboot is over when the id differs.
            let before = stdout
                .lines()
                .find_map(|l| l.strip_prefix("@@boot "))
                .map(String::from);
            // systemd reboots after this connection returned.
            let _ = conn
                .run_script(
                    "systemd-run --quiet --on-active=1 systemctl reboot || (sleep 1; systemctl reboot) >/dev/null 2>&1 &",
                    Duration::from_secs(20),
                )
                .await;
            conn.close().await;
            run.rebooted = true;
            let deadline = Instant::now() + timeout;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if Instant::now() > deadline {
                    return Err(format!("did not come back from its reboot within {timeout:?}"));
                }
                let Ok(c) = engine::connect(fleet, host, opts).await else { continue };
                let now = boot_id(&c).await;
                if now.is_some() && now != before {
                    // Up again with a new boot; wait for systemd to settle.
                    let _ = c
                        .run_script("systemctl is-system-running --wait >/dev/null 2>&1; true", Duration::from_secs(120))
                        .await;
                    conn = c;
                    break;
                }
                c.close().await;
            }
        }
        let gates = gates(job, host);
        if !gates.is_empty() {
            let out = conn
                .run_script(&health_script(&gates), Duration::from_secs(300))
                .await
                .map_err(|e| e.to_string())?;
            if !out.success() {
                conn.close().await;
                return Err(opts.redact(&out.stderr_text()));
            }
        }
        conn.close().await;
        Ok(())
    }
    .await;
    run.finish(result, start, opts)
}

/// Where a snapshot or power job finds its servers.
struct CloudJob<'a> {
    clouds: &'a Clouds,
    servers: Result<cloud::Observed, String>,
}

/// Health gates on a host, over a new connection.
async fn health(fleet: &Fleet, job: &Job, host: &Host, opts: &Options) -> Result<(), String> {
    crate::engine::health::check_host(fleet, host, &gates(job, host), opts).await
}

/// One server of a snapshot or power job: done through the provider's API.
async fn on_server(
    fleet: &Fleet,
    job: &Job,
    host_name: &str,
    opts: &Options,
    cj: &CloudJob<'_>,
) -> HostRun {
    let start = Instant::now();
    let mut run = HostRun::failed(host_name);
    let result: Result<(), String> = async {
        let host = fleet.host(host_name).ok_or("the host left the config")?;
        let observed = cj.servers.as_ref().map_err(|e| e.clone())?;
        let server = observed
            .server(host.provider, host_name)
            .filter(|s| s.owned_by(&fleet.name))
            .ok_or("its server does not exist (or is not managed by tidekeeper)")?;
        let provider = cj
            .clouds
            .get(host.provider)
            .ok_or("no credentials for its cloud provider")?;
        match &job.kind {
            JobKind::Snapshot { keep, labels } => {
                let mut labels = labels.clone();
                labels.extend(cloud::desired::ownership(&fleet.name));
                labels.insert(cloud::SNAPSHOT_JOB.into(), job.name.clone());
                let name = format!(
                    "{}-{host_name}-{}",
                    job.name,
                    opts.clock.now().format("%Y%m%dT%H%M%S%3fZ")
                );
                let made = provider
                    .snapshot(server, &name, &labels)
                    .await
                    .map_err(|e| e.to_string())?;
                run.log_tail.push(format!("snapshot {} created", made.name));
                // Retention: the newest `keep` of this job's snapshots stay.
                let mine = provider
                    .snapshots(server, &labels_for_retention(&labels))
                    .await
                    .map_err(|e| e.to_string())?;
                let excess = mine.len().saturating_sub(*keep as usize);
                for old in &mine[..excess] {
                    provider
                        .delete_snapshot(old)
                        .await
                        .map_err(|e| e.to_string())?;
                    run.log_tail
                        .push(format!("snapshot {} deleted (keep {keep})", old.name));
                }
            }
            JobKind::Power { .. } => {
                let on = super::plan::power_period(job, opts.clock.now()).is_some();
                let is_on = server.state == cloud::PowerState::Running;
                if on == is_on {
                    run.log_tail
                        .push(format!("already {}", if on { "running" } else { "off" }));
                } else {
                    provider
                        .power(server, on)
                        .await
                        .map_err(|e| e.to_string())?;
                    run.log_tail.push(if on {
                        "started".into()
                    } else {
                        "stopped".into()
                    });
                }
                if on {
                    let mut host = host.clone();
                    host.address = server.address.clone();
                    host.cloud_host_key = server.labels.get(cloud::HOST_KEY).cloned();
                    host.cloud_host_key_rotated =
                        server.labels.contains_key(cloud::HOST_KEY_ROTATED);
                    let wait = Duration::from_secs(job.timeout_secs.max(1));
                    if gates(job, &host).is_empty() {
                        // Nothing logs in: up once SSH answers.
                        let addr = host.address.clone().unwrap_or_default();
                        cloud::apply::wait_for_port(&addr, host.ssh.port, wait).await?;
                    } else {
                        // The health gates log in: a booting server turns a
                        // user other than root away for a while first.
                        crate::reconcile::wait_for_login(fleet, &host, opts, wait).await?;
                        health(fleet, job, &host, opts).await?;
                    }
                }
            }
            _ => unreachable!("only snapshot and power jobs act on servers"),
        }
        Ok(())
    }
    .await;
    run.finish(result, start, opts)
}

/// The labels that mark a job's snapshots (the user's own may change).
fn labels_for_retention(
    labels: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            [cloud::MANAGED_BY, cloud::FLEET, cloud::SNAPSHOT_JOB].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Run `job` now over its hosts (or `only` those), honouring window,
/// rolling settings, health gates and stop-on-failure. Snapshot and power
/// jobs act through the hosts' cloud providers in `clouds`.
/// The fleet with its cloud hosts' addresses, as a reconcile reaches them
/// (unchanged without cloud hosts, or when the providers do not answer:
/// connecting then says the address is not known).
pub(crate) async fn with_addresses(fleet: &Fleet, clouds: &Clouds) -> Fleet {
    let cloud = fleet.hosts.iter().any(|h| {
        matches!(
            h.provider,
            crate::model::desired::ProviderKind::Hetzner
                | crate::model::desired::ProviderKind::Lightsail
                | crate::model::desired::ProviderKind::Ec2
        )
    });
    if cloud && let Ok(obs) = cloud::observe(clouds).await {
        return crate::reconcile::with_cloud_addresses(fleet, &obs);
    }
    fleet.clone()
}

pub(crate) async fn run_job(
    fleet: &Fleet,
    job: &Job,
    only: &[String],
    opts: &Options,
    clouds: &Clouds,
) -> JobRun {
    let now = || opts.clock.now();
    let started = now();
    let timeout = chrono::Duration::seconds(job.timeout_secs as i64);
    let mut run = JobRun {
        job: job.name.clone(),
        kind: job.kind.name().into(),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished: String::new(),
        ok: true,
        not_started: None,
        hosts: vec![],
    };
    let hosts: Vec<String> = job
        .hosts
        .iter()
        .filter(|h| only.is_empty() || only.contains(h))
        .cloned()
        .collect();
    if let Some(why) = window_refusal(job.window.as_ref(), started, timeout) {
        run.not_started = Some(format!("not started: {why}"));
        run.finished = run.started.clone();
        return run;
    }
    let cloud_job = if matches!(job.kind, JobKind::Snapshot { .. } | JobKind::Power { .. }) {
        Some(CloudJob {
            clouds,
            servers: cloud::observe(clouds).await.map_err(|e| e.to_string()),
        })
    } else {
        None
    };
    // Cloud hosts are reached at their servers' addresses, as in a reconcile.
    let cloud_hosts = hosts.iter().any(|h| {
        fleet.host(h).is_some_and(|h| {
            matches!(
                h.provider,
                crate::model::desired::ProviderKind::Hetzner
                    | crate::model::desired::ProviderKind::Lightsail
                    | crate::model::desired::ProviderKind::Ec2
            )
        })
    });
    let with_addresses;
    let fleet = if cloud_job.is_none() && cloud_hosts {
        match cloud::observe(clouds).await {
            Ok(obs) => {
                with_addresses = crate::reconcile::with_cloud_addresses(fleet, &obs);
                &with_addresses
            }
            Err(_) => fleet,
        }
    } else {
        fleet
    };
    let batch = job.max_parallel.max(1) as usize;
    let mut stop: Option<String> = None;
    for (i, chunk) in hosts.chunks(batch).enumerate() {
        if i > 0 && job.pause_secs > 0 && stop.is_none() {
            tokio::time::sleep(Duration::from_secs(job.pause_secs)).await;
        }
        if stop.is_none()
            && let Some(why) = window_refusal(job.window.as_ref(), now(), timeout)
        {
            // Never start a host that could be left mid-job when the window ends.
            stop = Some(format!("not run: {why}"));
        }
        if let Some(why) = &stop {
            run.hosts.extend(chunk.iter().map(|h| skipped(h, why)));
            continue;
        }
        let results = run_chunk(fleet, job, chunk, opts, cloud_job.as_ref()).await;
        for r in results {
            if r.result != HostRunResult::Ok && job.stop_on_failure && stop.is_none() {
                stop = Some(format!(
                    "not run: {} failed and the job stops on failure",
                    r.host
                ));
            }
            run.hosts.push(r);
        }
    }
    run.ok = run.hosts.iter().all(|h| h.result == HostRunResult::Ok);
    run.finished = now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    run
}

/// A host the job did not start on, and why.
fn skipped(host: &str, why: &str) -> HostRun {
    HostRun {
        host: host.to_string(),
        result: HostRunResult::Skipped,
        error: Some(why.to_string()),
        rebooted: false,
        duration_ms: 0,
        log_tail: vec![],
    }
}

/// One batch of hosts at once: on their cloud servers for cloud jobs, over
/// SSH for the others.
async fn run_chunk(
    fleet: &Fleet,
    job: &Job,
    chunk: &[String],
    opts: &Options,
    cloud_job: Option<&CloudJob<'_>>,
) -> Vec<HostRun> {
    match cloud_job {
        Some(cj) => {
            futures_all(
                chunk
                    .iter()
                    .map(|h| Box::pin(on_server(fleet, job, h, opts, cj)))
                    .collect(),
            )
            .await
        }
        None => {
            futures_all(
                chunk
                    .iter()
                    .map(|h| Box::pin(on_host(fleet, job, h, opts)))
                    .collect(),
            )
            .await
        }
    }
}

/// Await several futures at once (a rolling batch), keeping their order.
async fn futures_all<F: std::future::Future>(
    mut futs: Vec<std::pin::Pin<Box<F>>>,
) -> Vec<F::Output> {
    use std::task::Poll;
    let mut done: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in futs.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => done[i] = Some(v),
                    Poll::Pending => all = false,
                }
            }
        }
        if all { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    done.into_iter()
        .map(|d| d.expect("every future finished"))
        .collect()
}
