//! Host keys for new servers. A key is known before the first login only if
//! tidekeeper makes it: it generates an ed25519 host key, hands it to the
//! server through cloud-init user data (`ssh_keys`), and labels the server
//! with the key's fingerprint. The first connection then checks the server
//! against that fingerprint — also after a crash, since the label lives on
//! the server — and the full key is recorded (status branch, or printed).

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKeyBase64};

pub struct HostKey {
    /// OpenSSH private key (goes only into the server's user data).
    pub private: String,
    /// `ssh-ed25519 AAAA…`
    pub public: String,
    pub fingerprint: String,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostKey({})", self.public)
    }
}

/// The label value for a key (the transport checks offered keys against it).
pub use crate::transport::host_key_fingerprint as fingerprint;

pub fn generate() -> std::io::Result<HostKey> {
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(std::io::Error::other)?
        .to_string();
    let b64 = key.public_key().public_key_base64();
    Ok(HostKey {
        private,
        public: format!("ssh-ed25519 {b64}"),
        fingerprint: fingerprint(&b64).expect("a fresh key encodes"),
    })
}

/// YAML string scalar (JSON strings are YAML).
fn scalar(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

const BOUNDARY: &str = "==tidekeeper-user-data==";

/// cloud-init user data installing `key` as the server's only host key and
/// `authorized` as login keys, followed by the host's own `extra` user data
/// (a second MIME part, so either kind of user data keeps working).
pub fn user_data(key: &HostKey, authorized: &[String], extra: Option<&str>) -> String {
    let mut cfg = String::from(
        "#cloud-config\n# Written by tidekeeper: the host key it pins for this server.\n\
         ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n",
    );
    for line in key.private.lines() {
        cfg.push_str("    ");
        cfg.push_str(line);
        cfg.push('\n');
    }
    cfg.push_str(&format!("  ed25519_public: {}\n", scalar(&key.public)));
    if !authorized.is_empty() {
        cfg.push_str("ssh_authorized_keys:\n");
        for k in authorized {
            cfg.push_str(&format!("  - {}\n", scalar(k)));
        }
    }
    let Some(extra) = extra.filter(|e| !e.trim().is_empty()) else {
        return cfg;
    };
    let kind = if extra.starts_with("#cloud-config") {
        "text/cloud-config"
    } else if extra.starts_with("#!") {
        "text/x-shellscript"
    } else {
        "text/plain"
    };
    format!(
        "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n\
         --{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\n{cfg}\n\
         --{BOUNDARY}\nContent-Type: {kind}; charset=\"utf-8\"\n\n{extra}\n\
         --{BOUNDARY}--\n"
    )
}

/// The public keys tidekeeper logs in with: of the key file, or else those
/// the ssh-agent holds. New servers authorize them through cloud-init.
pub async fn login_keys(key_file: Option<&str>) -> Vec<String> {
    use russh::keys::ssh_key::PublicKey;
    let line = |k: &PublicKey| k.to_openssh().ok();
    if let Some(path) = key_file {
        return crate::transport::read_small_file(path, crate::transport::KEY_FILE_LIMIT)
            .ok()
            .and_then(|text| russh::keys::decode_secret_key(&text, None).ok())
            .and_then(|k| line(k.public_key()))
            .into_iter()
            .collect();
    }
    let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await else {
        return vec![];
    };
    agent
        .request_identities()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| match id {
            russh::keys::agent::AgentIdentity::PublicKey { key, .. } => line(&key),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_ssh_keygen() {
        let k = generate().unwrap();
        assert!(k.public.starts_with("ssh-ed25519 "));
        assert_eq!(k.fingerprint.len(), 40);
        let dir = std::env::temp_dir().join(format!("tk-hostkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, &k.private).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .args(["-y", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), k.public);
        let b64 = k.public.split_whitespace().nth(1).unwrap();
        assert_eq!(fingerprint(b64).unwrap(), k.fingerprint);
    }

    #[test]
    fn user_data_carries_the_key_and_keeps_the_hosts_own() {
        let k = generate().unwrap();
        let plain = user_data(&k, &["ssh-ed25519 AAAA me@x".into()], None);
        assert!(plain.starts_with("#cloud-config\n"));
        assert!(plain.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(plain.contains("  - \"ssh-ed25519 AAAA me@x\"\n"));
        let mixed = user_data(&k, &[], Some("#!/bin/sh\necho hi\n"));
        assert!(mixed.starts_with("Content-Type: multipart/mixed"));
        assert!(mixed.contains("Content-Type: text/x-shellscript"));
        assert!(mixed.contains("echo hi"));
    }
}
