//! age secrets: where the identity comes from, and the `tidekeeper secrets`
//! helpers. Decryption itself happens in the model, in memory.

use std::path::Path;
use std::str::FromStr;

use crate::model::desired::Settings;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the age identity file {path}: {reason}")]
    IdentityFile { path: String, reason: String },
    #[error(
        "no age identity: set {env} (or secrets.identity_file in tidekeeper.yaml) to decrypt secrets"
    )]
    NoIdentity { env: String },
    #[error("{0}")]
    Age(String),
    #[error("invalid recipient {0:?}: expected an age public key (age1…)")]
    Recipient(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The identity text from the variable named by `secrets.identity_env`, or
/// the file `secrets.identity_file` (outside the repo); None when neither is set.
pub fn identity(settings: &Settings) -> Result<Option<String>, SecretsError> {
    if let Ok(v) = std::env::var(&settings.secrets_identity_env)
        && !v.trim().is_empty()
    {
        return Ok(Some(v));
    }
    if let Some(path) = &settings.secrets_identity_file {
        return crate::transport::read_small_file(path, crate::transport::KEY_FILE_LIMIT)
            .map(Some)
            .map_err(|reason| SecretsError::IdentityFile {
                path: path.clone(),
                reason,
            });
    }
    Ok(None)
}

/// Public keys of the identity's secret keys.
pub fn recipients_of(identity: &str) -> Vec<String> {
    identity
        .lines()
        .filter_map(|l| age::x25519::Identity::from_str(l.trim()).ok())
        .map(|i| i.to_public().to_string())
        .collect()
}

pub use crate::model::resolve::{RECIPIENTS_FILE, parse_recipients};

/// How many recipients an age file was encrypted to (its header's stanzas).
/// age does not name them, but it does count them.
pub fn recipient_count(ciphertext: &[u8]) -> Result<usize, SecretsError> {
    use std::io::Read;
    let mut r = age::armor::ArmoredReader::new(ciphertext);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    // The header ends with its MAC line; never read past a small bound.
    while !head.windows(4).any(|w| w == b"\n---") && head.len() < 1 << 20 {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let header = text.split("\n---").next().unwrap_or("");
    if !header.starts_with("age-encryption.org/") {
        return Err(SecretsError::Age("not an age file".into()));
    }
    // Stanzas of real recipient types; age also writes random "grease" ones.
    Ok(header
        .lines()
        .filter_map(|l| l.strip_prefix("-> "))
        .filter(|l| {
            let kind = l.split(' ').next().unwrap_or("");
            matches!(kind, "X25519" | "ssh-ed25519" | "ssh-rsa" | "scrypt")
                || kind.starts_with("piv-p256")
        })
        .count())
}

/// Encrypt `plaintext` to `recipients` (age1… public keys), ASCII-armored.
pub fn encrypt(recipients: &[String], plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
    let rs: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r).map_err(|_| SecretsError::Recipient(r.clone()))
        })
        .collect::<Result<_, _>>()?;
    let encryptor = age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| SecretsError::Age(e.to_string()))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| SecretsError::Age(e.to_string()))?;
    let mut w = encryptor
        .wrap_output(armor)
        .map_err(|e| SecretsError::Age(e.to_string()))?;
    std::io::Write::write_all(&mut w, plaintext)?;
    let armor = w.finish()?;
    armor.finish()?;
    Ok(out)
}

/// Write `secrets/<name>.age` in the repo's work tree (mode 0644: it is
/// ciphertext), via a temporary file and a rename.
pub fn write_secret(
    repo: &Path,
    name: &str,
    ciphertext: &[u8],
) -> Result<std::path::PathBuf, SecretsError> {
    let dir = repo.join("secrets");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.age"));
    let tmp = dir.join(format!(".{name}.age.tmp"));
    std::fs::write(&tmp, ciphertext)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
