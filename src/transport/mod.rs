//! How tidekeeper reaches a host: over SSH (russh, one connection per host
//! for a whole reconcile) or locally (pull mode, optionally confined to a
//! root directory). Both run POSIX shell scripts and return their output;
//! everything above this module is transport-agnostic.

mod local;
mod ssh;

use std::time::Duration;

pub use local::Local;
pub use ssh::{HostKeyPolicy, Ssh, SshTarget};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "host key of {addr} is not pinned: the server offered {offered}\n  \
         add it to the config repo's known_hosts after checking it out of band, e.g.\n  {line}"
    )]
    UnknownHostKey {
        addr: String,
        offered: String,
        line: String,
    },
    #[error(
        "HOST KEY MISMATCH for {addr}: the server offered {offered}, but known_hosts pins {pinned}\n  \
         someone may be intercepting the connection, or the server was reinstalled; \
         refusing to connect"
    )]
    HostKeyMismatch {
        addr: String,
        offered: String,
        pinned: String,
    },
    #[error("login as {user}@{addr} refused: {reason}")]
    AuthFailed {
        user: String,
        addr: String,
        reason: String,
    },
    #[error("cannot read the SSH key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{addr}: {what} did not finish within {after:?}")]
    Timeout {
        addr: String,
        what: String,
        after: Duration,
    },
    #[error("{addr}: connection lost: {reason}")]
    Lost { addr: String, reason: String },
    #[error("local: {0}")]
    Local(String),
}

/// What a remote script produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// A live connection to one host.
pub enum Connection {
    Ssh(Box<Ssh>),
    Local(Local),
}

impl Connection {
    /// Run `script` with `sh` on the host. The script is uploaded whole and
    /// checked for length before it runs, so a connection cut mid-transfer
    /// can never execute a truncated line.
    pub async fn run_script(
        &self,
        script: &str,
        timeout: Duration,
    ) -> Result<Output, TransportError> {
        match self {
            Connection::Ssh(s) => s.run_script(script, timeout).await,
            Connection::Local(l) => l.run_script(script, timeout).await,
        }
    }

    /// Directory every managed path is placed under (`""` for the real `/`).
    pub fn root(&self) -> &str {
        match self {
            Connection::Ssh(_) => "",
            Connection::Local(l) => l.root(),
        }
    }

    /// A NEW connection to the same host (to prove access after a change).
    pub async fn reconnect(&self) -> Result<Connection, TransportError> {
        match self {
            Connection::Ssh(s) => Ok(Connection::Ssh(Box::new(
                Ssh::connect(s.target().clone()).await?,
            ))),
            Connection::Local(l) => Ok(Connection::Local(Local::new(l.root()))),
        }
    }

    pub async fn close(self) {
        if let Connection::Ssh(s) = self {
            s.close().await;
        }
    }
}

/// The shell command that receives a script on stdin, verifies its length and
/// runs it. `sudo` wraps it for a non-root login user.
pub(crate) fn runner_command(len: usize, sudo: bool) -> String {
    let inner = format!(
        "umask 077; f=$(mktemp /tmp/tidekeeper.XXXXXXXX) || exit 125; \
         cat >\"$f\"; if [ \"$(wc -c <\"$f\")\" -eq {len} ]; then LC_ALL=C sh \"$f\"; rc=$?; \
         else echo 'tidekeeper: script arrived incomplete; not run' >&2; rc=125; fi; \
         rm -f \"$f\"; exit $rc"
    );
    if sudo {
        format!("sudo -n sh -c {}", shell_quote(&inner))
    } else {
        inner
    }
}

/// A host key's fingerprint as cloud labels carry it: hex SHA-256 of its
/// wire blob, 40 digits (label values are limited to 63 characters on Hetzner).
pub fn host_key_fingerprint(key_b64: &str) -> Option<String> {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .ok()?;
    Some(crate::digest::sha256_hex(&blob)[..40].to_string())
}

/// Quote a string for POSIX sh.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Largest key or identity file tidekeeper reads from the controller.
pub const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// Read a small file the config names on the controller (an SSH key, an age
/// identity), refusing anything that is not a regular file or is larger than
/// `limit`: a path like `/dev/zero` must fail, not fill memory.
pub fn read_small_file(path: &str, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes; not a key file"));
    }
    String::from_utf8(buf).map_err(|_| "not text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "with space", "it's", "", "$(rm -rf /)", "a\nb"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}
