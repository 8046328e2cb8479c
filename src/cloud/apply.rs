//! Carry out a cloud plan through the providers. Creates get a host key
//! generated here (see [`super::hostkey`]); each change returns when the
//! provider has finished it. Changes that destroy a server run only when the
//! plan permits them, and deletes come last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::plan::{CloudAction, CloudChange, CloudPlan, NetworkChange};
use super::{Clouds, HOST_KEY, ObservedServer, hostkey};

/// What happened to one server.
#[derive(Debug, Clone, Serialize)]
pub struct CloudOutcome {
    /// The host whose server this is, or the network's name.
    pub host: String,
    /// `server` or `network`.
    pub what: &'static str,
    pub action: CloudAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The server as it is now (created, replaced, updated, resized).
    #[serde(skip)]
    pub server: Option<ObservedServer>,
    /// `ssh-ed25519 AAAA…` generated for a created (or replacing) server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    pub seconds: f64,
}

/// A new server for `c`: made from scratch, or (`copy_of`) from a
/// snapshot of the old one. Either way it gets a host key generated here.
async fn create(
    clouds: &Clouds,
    c: &CloudChange,
    login_keys: &[String],
    copy_of: Option<&ObservedServer>,
) -> Result<(ObservedServer, String), String> {
    let want = c
        .desired
        .as_ref()
        .ok_or("a create without a desired server")?;
    let provider = clouds
        .get(c.provider)
        .ok_or_else(|| format!("no {:?} client", c.provider))?;
    let key = hostkey::generate().map_err(|e| format!("generating a host key: {e}"))?;
    let mut want = want.clone();
    want.labels.insert(HOST_KEY.into(), key.fingerprint.clone());
    // Public keys in `ssh_keys` may log in too, whatever the provider does with them.
    let mut authorized = login_keys.to_vec();
    authorized.extend(
        want.ssh_keys
            .iter()
            .filter(|k| crate::model::desired::is_public_key(k))
            .cloned(),
    );
    let user_data = hostkey::user_data(&key, &authorized, want.user_data.as_deref());
    let server = match copy_of {
        Some(have) => provider.resize_by_copy(have, &want, &user_data).await,
        None => provider.create(&want, &user_data).await,
    }
    .map_err(|e| e.to_string())?;
    Ok((server, key.public))
}

async fn one(clouds: &Clouds, c: &CloudChange, login_keys: &[String]) -> CloudOutcome {
    let start = Instant::now();
    let mut out = CloudOutcome {
        host: c.host.clone(),
        what: "server",
        action: c.action,
        error: None,
        server: None,
        host_key: None,
        seconds: 0.0,
    };
    let Some(provider) = clouds.get(c.provider) else {
        out.error = Some(format!("no client for {:?}", c.provider));
        return out;
    };
    let result: Result<(), String> = async {
        match c.action {
            CloudAction::Create => {
                let (s, k) = create(clouds, c, login_keys, None).await?;
                out.server = Some(s);
                out.host_key = Some(k);
            }
            CloudAction::Resize if provider.resizes_by_copy() => {
                let have = c.observed.as_ref().ok_or("a resize without a server")?;
                let (s, k) = create(clouds, c, login_keys, Some(have)).await?;
                out.server = Some(s);
                out.host_key = Some(k);
            }
            CloudAction::Replace => {
                let have = c.observed.as_ref().ok_or("a replace without a server")?;
                provider
                    .delete(have, true)
                    .await
                    .map_err(|e| e.to_string())?;
                let (s, k) = create(clouds, c, login_keys, None).await?;
                out.server = Some(s);
                out.host_key = Some(k);
            }
            CloudAction::Update | CloudAction::Resize => {
                let have = c.observed.as_ref().ok_or("an update without a server")?;
                let want = c.desired.as_ref().ok_or("an update without a config")?;
                if c.action == CloudAction::Resize {
                    provider
                        .resize(have, &want.size)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                provider
                    .update(have, want)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            CloudAction::Delete => {
                let have = c.observed.as_ref().ok_or("a delete without a server")?;
                provider
                    .delete(have, false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
    .await;
    out.error = result.err();
    out.seconds = start.elapsed().as_secs_f64();
    out
}

/// Apply every change of `plan` that is not blocked: creates, updates,
/// resizes and replaces `parallel` at a time, then deletes. Blocked changes
/// are reported as refused.
pub(crate) async fn apply(
    plan: &CloudPlan,
    clouds: &Clouds,
    login_keys: &[String],
    parallel: usize,
    progress: &(dyn Fn(&str, &str) + Send + Sync),
) -> Vec<CloudOutcome> {
    let mut outcomes = Vec::new();
    // Networks first: servers are attached to them as they are created.
    let (gone, made): (Vec<_>, Vec<_>) = plan
        .networks
        .iter()
        .partition(|n| n.action == CloudAction::Delete);
    for n in made {
        outcomes.push(network(clouds, plan.fleet.clone(), n, progress).await);
    }
    let (deletes, rest): (Vec<&CloudChange>, Vec<&CloudChange>) = plan
        .changes
        .iter()
        .partition(|c| c.action == CloudAction::Delete);
    // Servers with fixed network addresses first: a server given the next
    // free address at the same time could take one of theirs.
    let (fixed, rest): (Vec<&CloudChange>, Vec<&CloudChange>) = rest.into_iter().partition(|c| {
        c.desired
            .as_ref()
            .is_some_and(|d| d.networks.iter().any(|n| n.ip.is_some()))
    });
    for batch in [fixed, rest, deletes] {
        let sem = Arc::new(Semaphore::new(parallel.max(1)));
        let work: Vec<_> = batch
            .into_iter()
            .map(|c| {
                let sem = sem.clone();
                async move {
                    if let Some(b) = &c.blocked {
                        return CloudOutcome {
                            host: c.host.clone(),
                            what: "server",
                            action: c.action,
                            error: Some(format!("refused: {b}")),
                            server: None,
                            host_key: None,
                            seconds: 0.0,
                        };
                    }
                    let _permit = sem.acquire().await.expect("semaphore open");
                    progress(&c.host, &format!("{} server…", gerund(c.action)));
                    let o = one(clouds, c, login_keys).await;
                    match &o.error {
                        None => progress(
                            &c.host,
                            &format!("server {} ({:.0}s)", past(c.action), o.seconds),
                        ),
                        Some(e) => progress(&c.host, &format!("server failed: {e}")),
                    }
                    o
                }
            })
            .collect();
        outcomes.extend(super::join_all(work).await);
    }
    // Networks last to go: after the servers on them.
    for n in gone {
        outcomes.push(network(clouds, plan.fleet.clone(), n, progress).await);
    }
    outcomes
}

/// Create, extend or delete one network.
async fn network(
    clouds: &Clouds,
    fleet: String,
    n: &NetworkChange,
    progress: &(dyn Fn(&str, &str) + Send + Sync),
) -> CloudOutcome {
    let start = Instant::now();
    let label = format!("network {}", n.name);
    let mut out = CloudOutcome {
        host: n.name.clone(),
        what: "network",
        action: n.action,
        error: None,
        server: None,
        host_key: None,
        seconds: 0.0,
    };
    let result: Result<(), String> = async {
        if let Some(b) = &n.blocked {
            return Err(format!("refused: {b}"));
        }
        let provider = clouds
            .get(n.provider)
            .ok_or_else(|| format!("no client for {:?}", n.provider))?;
        progress(&label, &format!("{} network…", gerund(n.action)));
        match (&n.desired, &n.observed) {
            (_, Some(o)) if n.action == CloudAction::Delete => provider.delete_network(o).await,
            (Some(d), _) => provider.ensure_network(&fleet, d).await,
            _ => return Err("a network change without a network".into()),
        }
        .map_err(|e| e.to_string())
    }
    .await;
    out.error = result.err();
    out.seconds = start.elapsed().as_secs_f64();
    match &out.error {
        None => progress(
            &label,
            &format!("network {} ({:.0}s)", past(n.action), out.seconds),
        ),
        Some(e) => progress(&label, &format!("network failed: {e}")),
    }
    out
}

fn gerund(a: CloudAction) -> &'static str {
    match a {
        CloudAction::Create => "creating the",
        CloudAction::Update => "updating the",
        CloudAction::Resize => "resizing the",
        CloudAction::Replace => "replacing the",
        CloudAction::Delete => "deleting the",
    }
}

fn past(a: CloudAction) -> &'static str {
    match a {
        CloudAction::Create => "created",
        CloudAction::Update => "updated",
        CloudAction::Resize => "resized",
        CloudAction::Replace => "replaced",
        CloudAction::Delete => "deleted",
    }
}

/// Wait until `addr:port` accepts TCP connections (a new server's sshd).
pub(crate) async fn wait_for_port(addr: &str, port: u16, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect((addr, port)),
        )
        .await;
        if let Ok(Ok(_)) = attempt {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "SSH on {addr}:{port} did not answer within {}s of the server running",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
