//! A cloud server's host key, replaced by one generated on the server.
//!
//! The key tidekeeper hands a new server travels in its user data, which any
//! process or container on the server can read from the metadata service;
//! whoever reads it could pose as the server for good. So once the server
//! is reached with that key, a fresh key is made on the server, in guarded
//! steps: [`switch`] (new key beside the old, `sshd -t`, swap, reload),
//! [`confirm`] (a NEW connection sees the new key), then — once the caller
//! pinned it — [`finish`] (the old key files deleted), or [`restore`]
//! (the old key back) when a step after the switch fails.

use std::time::Duration;

use super::Options;
use crate::model::desired::{Fleet, Host};
use crate::transport::Connection;

/// Where the new key is made and the old keys wait until the new one is pinned.
const WORK: &str = "/etc/ssh/tidekeeper-rotate";

const TIMEOUT: Duration = Duration::from_secs(120);

/// Reload sshd under the unit name Debian (`ssh`) or others (`sshd`) use.
const RELOAD: &str =
    "{ systemctl reload ssh.service 2>/dev/null || systemctl reload sshd.service; }";

/// Make a new ed25519 host key on the server and switch sshd to it; the
/// old keys wait in [`WORK`]. On any failure the script puts the old keys
/// back itself. The new public key (base64), or what failed.
pub(crate) async fn switch(conn: &Connection) -> Result<String, String> {
    let script = format!(
        r#"set -u
w={WORK}
fail() {{ echo "$1" >&2; exit 3; }}
if [ -d "$w/old" ] && [ -n "$(ls -A "$w/old" 2>/dev/null)" ]; then
  fail "$w/old holds host keys from an earlier rotation that did not finish; check which key the server should offer, move them back to /etc/ssh or delete them, then apply again"
fi
rm -rf "$w" && mkdir -m 700 "$w" "$w/old" || fail "cannot create $w"
ssh-keygen -q -t ed25519 -N '' -C '' -f "$w/ssh_host_ed25519_key" </dev/null || fail "ssh-keygen failed"
out=$(/usr/sbin/sshd -t 2>&1) || {{ rm -rf "$w"; fail "sshd -t rejects the configuration: $out"; }}
out=$(/usr/sbin/sshd -t -h "$w/ssh_host_ed25519_key" 2>&1) || {{ rm -rf "$w"; fail "sshd -t rejects the new key: $out"; }}
for f in /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; do
  [ -e "$f" ] && mv "$f" "$w/old/"
done
mv "$w/ssh_host_ed25519_key" "$w/ssh_host_ed25519_key.pub" /etc/ssh/ || {{ {restore}; fail "cannot put the new key in /etc/ssh"; }}
{RELOAD} || {{ {restore}; fail "reloading sshd failed; the old key is back"; }}
cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub
"#,
        restore = RESTORE_STEPS
    );
    let out = run(conn, &script).await?;
    let b64 = String::from_utf8_lossy(&out).trim().to_string();
    if b64.is_empty() {
        return Err("the server printed no new key".into());
    }
    Ok(b64)
}

/// The old keys back in /etc/ssh, the new one gone.
const RESTORE_STEPS: &str = r#"rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub; mv "$w"/old/* /etc/ssh/ 2>/dev/null"#;

/// Put the old keys back and reload sshd (after a failed confirmation or
/// a label that could not be written).
pub(crate) async fn restore(conn: &Connection) -> Result<(), String> {
    let script = format!(
        "set -u\nw={WORK}\n[ -n \"$(ls -A \"$w/old\" 2>/dev/null)\" ] || {{ echo \"no old keys in $w/old\" >&2; exit 3; }}\n\
         {RESTORE_STEPS}\nrm -rf \"$w\"\n{RELOAD}\n"
    );
    run(conn, &script).await.map(|_| ())
}

/// Delete the old keys, once the new one is pinned.
pub(crate) async fn finish(conn: &Connection) -> Result<(), String> {
    run(conn, &format!("rm -rf {WORK}\n")).await.map(|_| ())
}

/// A NEW connection to `host` that accepts only the key of fingerprint
/// `fp`: the known_hosts line of the key the server offered.
pub(crate) async fn confirm(
    fleet: &Fleet,
    host: &Host,
    opts: &Options,
    fp: &str,
) -> Result<String, String> {
    let mut host = host.clone();
    host.cloud_host_key = Some(fp.to_string());
    host.cloud_host_key_rotated = true;
    // A reloaded sshd re-executes itself: for a moment nothing listens.
    let deadline = tokio::time::Instant::now() + RELISTEN;
    let c = loop {
        match super::connect(fleet, &host, opts).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let line = super::accepted_key(&c, true);
    c.close().await;
    line.ok_or_else(|| "the new connection accepted no key".into())
}

/// How long a reloaded sshd may take to listen again.
const RELISTEN: Duration = Duration::from_secs(15);

async fn run(conn: &Connection, script: &str) -> Result<Vec<u8>, String> {
    let out = conn
        .run_script(script, TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        return Ok(out.stdout);
    }
    let why = out.stderr_text();
    Err(if why.is_empty() {
        format!("the script exited with {:?}", out.status)
    } else {
        why
    })
}
