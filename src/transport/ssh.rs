//! SSH with russh: pinned host keys, key-file or agent authentication, one
//! connection per host with a bounded number of concurrent channels.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{self, PrivateKeyWithHashAlg, PublicKeyBase64};
use tokio::sync::Semaphore;

use super::{Output, TransportError, runner_command};

/// sshd allows 10 sessions per connection (MaxSessions); stay below it.
const MAX_CHANNELS: usize = 8;

/// Which server keys to accept.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Only these `(type, base64)` keys from the config repo's known_hosts.
    Pinned(Vec<(String, String)>),
    /// Accept the key offered on first contact (only when the repo enables it);
    /// the learned key is available from [`Ssh::host_key`].
    TrustOnFirstUse,
    /// The ed25519 key tidekeeper generated for a new cloud server, known by
    /// its fingerprint (see `cloud::hostkey`); the full key is then available
    /// from [`Ssh::host_key`].
    Generated(String),
}

#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Name used in messages (the host's name in the fleet).
    pub name: String,
    pub addr: SocketAddr,
    pub user: String,
    /// Private key file; without it the ssh-agent at `SSH_AUTH_SOCK` is asked.
    pub key_file: Option<String>,
    pub host_keys: HostKeyPolicy,
    pub sudo: bool,
    pub connect_timeout: Duration,
    /// The jump host to tunnel through (direct-tcpip), itself a target with
    /// its own pinned key; None: connect directly.
    pub via: Option<Box<SshTarget>>,
}

impl SshTarget {
    /// `addr`, or `addr via jump` for messages.
    fn describe(&self) -> String {
        match &self.via {
            Some(j) => format!("{} via {}", self.addr, j.describe()),
            None => self.addr.to_string(),
        }
    }

    /// Which shared jump connection serves this target.
    fn jump_key(&self) -> String {
        format!(
            "{}@{}/{:?}/{}",
            self.user,
            self.addr,
            self.key_file,
            self.via.as_ref().map(|v| v.jump_key()).unwrap_or_default()
        )
    }
}

/// Jump connections in use, shared by every host behind the same jump host:
/// one SSH connection to a bastion carries the tunnels of all of them. Held
/// weakly: the last host behind a bastion to close its connection closes it.
static JUMPS: tokio::sync::Mutex<Vec<JumpEntry>> = tokio::sync::Mutex::const_new(Vec::new());

/// A jump connection by its [`SshTarget::jump_key`].
type JumpEntry = (String, std::sync::Weak<Ssh>);

/// The shared connection to jump host `target`, opened if none is alive.
async fn jump(target: &SshTarget) -> Result<Arc<Ssh>, TransportError> {
    let key = target.jump_key();
    let mut jumps = JUMPS.lock().await;
    jumps.retain(|(_, w)| w.strong_count() > 0);
    if let Some(live) = jumps
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
        .filter(|s| !s.handle.is_closed())
    {
        return Ok(live);
    }
    let ssh = Arc::new(Box::pin(Ssh::connect(target.clone())).await?);
    jumps.retain(|(k, _)| *k != key);
    jumps.push((key, Arc::downgrade(&ssh)));
    Ok(ssh)
}

#[derive(Debug, Clone)]
enum Verdict {
    Accepted(String, String),
    Unknown(String, String),
    Mismatch {
        offered: (String, String),
        pinned: (String, String),
    },
}

struct Client {
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<Verdict>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().unwrap() =
                Some(Verdict::Unknown("certificate".into(), String::new()));
            return Ok(false);
        };
        let offered = (
            key.algorithm().as_str().to_string(),
            key.public_key_base64(),
        );
        let verdict = match &self.policy {
            HostKeyPolicy::TrustOnFirstUse => Verdict::Accepted(offered.0, offered.1),
            HostKeyPolicy::Generated(fp) => {
                if super::host_key_fingerprint(&offered.1).as_deref() == Some(fp.as_str()) {
                    Verdict::Accepted(offered.0, offered.1)
                } else {
                    Verdict::Mismatch {
                        offered,
                        pinned: ("ssh-ed25519".into(), format!("generated:{fp}")),
                    }
                }
            }
            HostKeyPolicy::Pinned(pins) => {
                if pins.contains(&offered) {
                    Verdict::Accepted(offered.0, offered.1)
                } else if let Some(pin) = pins.iter().find(|p| p.0 == offered.0) {
                    Verdict::Mismatch {
                        offered,
                        pinned: pin.clone(),
                    }
                } else {
                    Verdict::Unknown(offered.0, offered.1)
                }
            }
        };
        let ok = matches!(verdict, Verdict::Accepted(..));
        *self.verdict.lock().unwrap() = Some(verdict);
        Ok(ok)
    }
}

pub struct Ssh {
    handle: Handle<Client>,
    target: SshTarget,
    channels: Semaphore,
    host_key: (String, String),
    /// The jump connection the tunnel runs in, kept open while this is.
    _jump: Option<Arc<Ssh>>,
}

fn fingerprint(kind: &str, b64: &str) -> String {
    if let Some(fp) = b64.strip_prefix("generated:") {
        return format!("the {kind} key tidekeeper generated for this server (sha256 {fp}…)");
    }
    match keys::parse_public_key_base64(b64) {
        Ok(k) => format!("{kind} {}", k.fingerprint(Default::default())),
        Err(_) => format!("{kind} (unparseable)"),
    }
}

/// The client's settings: keepalives, and the host key types it asks for.
fn client_config(policy: &HostKeyPolicy) -> Arc<client::Config> {
    let mut preferred = russh::Preferred::default();
    if let HostKeyPolicy::Pinned(pins) = policy {
        // Ask only for key types we have pinned, so a server with several
        // host keys presents one we can check.
        let algs: Vec<keys::Algorithm> = preferred
            .key
            .iter()
            .filter(|a| {
                pins.iter()
                    .any(|p| p.0 == a.as_str() || alg_family(a) == p.0)
            })
            .cloned()
            .collect();
        if !algs.is_empty() {
            preferred.key = Cow::Owned(algs);
        }
    }
    if let HostKeyPolicy::Generated(_) = policy {
        preferred.key = Cow::Owned(vec![keys::Algorithm::Ed25519]);
    }
    Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        preferred,
        ..Default::default()
    })
}

/// Why a connection failed, told by what the key check saw: an unknown or
/// changed host key, or no route.
fn refusal(
    e: TransportError,
    key_verdict: Option<Verdict>,
    at: &SocketAddr,
    addr: String,
) -> TransportError {
    let TransportError::Unreachable { reason, .. } = &e else {
        return e; // the jump host's own error
    };
    let reason = reason.clone();
    match key_verdict {
        Some(Verdict::Unknown(kind, b64)) => TransportError::UnknownHostKey {
            offered: fingerprint(&kind, &b64),
            line: format!("{} {kind} {b64}", known_hosts_pattern(at)),
            addr,
        },
        Some(Verdict::Mismatch { offered, pinned }) => TransportError::HostKeyMismatch {
            addr,
            offered: fingerprint(&offered.0, &offered.1),
            pinned: fingerprint(&pinned.0, &pinned.1),
        },
        _ => TransportError::Unreachable { addr, reason },
    }
}

impl Ssh {
    pub async fn connect(target: SshTarget) -> Result<Ssh, TransportError> {
        let addr = target.describe();
        let config = client_config(&target.host_keys);
        let verdict = Arc::new(Mutex::new(None));
        let handler = Client {
            policy: target.host_keys.clone(),
            verdict: verdict.clone(),
        };
        let mut jump_conn = None;
        let unreachable = |e: russh::Error| TransportError::Unreachable {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let connecting = async {
            let Some(via) = &target.via else {
                return client::connect(config, target.addr, handler)
                    .await
                    .map_err(unreachable);
            };
            let j = jump(via).await?;
            let tunnel = j
                .handle
                .channel_open_direct_tcpip(
                    target.addr.ip().to_string(),
                    target.addr.port().into(),
                    "127.0.0.1",
                    0,
                )
                .await
                .map_err(|e| TransportError::Unreachable {
                    addr: addr.clone(),
                    reason: format!(
                        "the jump host {} opened no tunnel ({e}); does its sshd allow TCP forwarding, and can it reach {}?",
                        via.addr, target.addr
                    ),
                })?;
            jump_conn = Some(j);
            client::connect_stream(config, tunnel.into_stream(), handler)
                .await
                .map_err(unreachable)
        };
        let result = tokio::time::timeout(target.connect_timeout, connecting).await;
        let key_verdict = verdict.lock().unwrap().clone();
        let mut handle = match result {
            Err(_) => {
                return Err(TransportError::Unreachable {
                    addr,
                    reason: format!("no answer within {:?}", target.connect_timeout),
                });
            }
            Ok(Err(e)) => return Err(refusal(e, key_verdict, &target.addr, addr)),
            Ok(Ok(h)) => h,
        };
        let host_key = match key_verdict {
            Some(Verdict::Accepted(k, b)) => (k, b),
            _ => (String::new(), String::new()),
        };
        authenticate(&mut handle, &target).await?;
        Ok(Ssh {
            handle,
            target,
            channels: Semaphore::new(MAX_CHANNELS),
            host_key,
            _jump: jump_conn,
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The server's key as accepted: `(type, base64)`.
    pub fn host_key(&self) -> &(String, String) {
        &self.host_key
    }

    pub async fn run_script(
        &self,
        script: &str,
        timeout: Duration,
    ) -> Result<Output, TransportError> {
        let addr = self.target.addr.to_string();
        let _permit = self.channels.acquire().await.expect("semaphore open");
        let lost = |e: russh::Error| TransportError::Lost {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let work = async {
            let mut channel = self.handle.channel_open_session().await.map_err(lost)?;
            channel
                .exec(true, runner_command(script.len(), self.target.sudo))
                .await
                .map_err(lost)?;
            channel.data(script.as_bytes()).await.map_err(lost)?;
            channel.eof().await.map_err(lost)?;
            let mut out = Output::default();
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    _ => {}
                }
            }
            if out.status.is_none() {
                return Err(TransportError::Lost {
                    addr: addr.clone(),
                    reason: "the remote command ended without an exit status".into(),
                });
            }
            Ok(out)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| TransportError::Timeout {
                addr: addr.clone(),
                what: "remote script".into(),
                after: timeout,
            })?
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// `rsa-sha2-512` and friends are all served by an `ssh-rsa` host key.
fn alg_family(a: &keys::Algorithm) -> &'static str {
    match a {
        keys::Algorithm::Rsa { .. } => "ssh-rsa",
        _ => "",
    }
}

fn known_hosts_pattern(addr: &SocketAddr) -> String {
    if addr.port() == 22 {
        addr.ip().to_string()
    } else {
        format!("[{}]:{}", addr.ip(), addr.port())
    }
}

async fn authenticate(handle: &mut Handle<Client>, t: &SshTarget) -> Result<(), TransportError> {
    let addr = t.addr.to_string();
    let refused = |reason: String| TransportError::AuthFailed {
        user: t.user.clone(),
        addr: addr.clone(),
        reason,
    };
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| refused(e.to_string()))?
        .flatten();
    if let Some(path) = &t.key_file {
        let key = super::read_small_file(path, super::KEY_FILE_LIMIT)
            .and_then(|text| keys::decode_secret_key(&text, None).map_err(|e| e.to_string()))
            .map_err(|reason| TransportError::Key {
                path: path.clone(),
                reason,
            })?;
        let res = handle
            .authenticate_publickey(
                t.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash),
            )
            .await
            .map_err(|e| refused(e.to_string()))?;
        if !res.success() {
            return Err(refused(format!("the server did not accept the key {path}")));
        }
        return Ok(());
    }
    let mut agent = keys::agent::client::AgentClient::connect_env()
        .await
        .map_err(|e| {
            refused(format!(
                "no key file configured (defaults.ssh.key) and no ssh-agent: {e}"
            ))
        })?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| refused(format!("ssh-agent: {e}")))?;
    for id in identities {
        let keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
            continue;
        };
        let res = handle
            .authenticate_publickey_with(t.user.clone(), key, rsa_hash, &mut agent)
            .await
            .map_err(|e| refused(format!("ssh-agent: {e}")))?;
        if res.success() {
            return Ok(());
        }
    }
    Err(refused("no key in the ssh-agent was accepted".into()))
}
