//! Stage 2: the secrets under secrets/ (age files), decrypted when an
//! identity is given, and the strings to redact from every output.

use super::*;

impl Loader<'_> {
    /// Names of `secrets/<name>.age`; anything else in secrets/ is refused.
    pub(super) fn secrets(&mut self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let entries: Vec<(String, bool)> = self
            .tree
            .under("secrets")
            .map(|(p, e)| (p.to_string(), matches!(e, Entry::File { .. })))
            .collect();
        for (path, is_file) in entries {
            let rel = &path["secrets/".len()..];
            if matches!(
                rel.rsplit('/').next(),
                Some("README.md" | ".gitkeep" | ".gitattributes")
            ) {
                continue;
            }
            if path == RECIPIENTS_FILE && is_file {
                let text =
                    String::from_utf8_lossy(self.tree.file(&path).unwrap_or_default()).to_string();
                if let Err((line, key)) = parse_recipients(&text) {
                    self.err(Origin::new(&path, line as u64, 1).error("invalid-recipient", format!("{key:?} is not an age public key"))
                        .with_help("one age1… public key a line (`age-keygen -y KEYFILE` prints it); `#` starts a comment"));
                }
                continue;
            }
            match rel.strip_suffix(".age") {
                Some(name) if is_file => {
                    names.insert(name.to_string());
                    if let Some(identity) = self.identity {
                        let bytes = self.tree.file(&path).unwrap_or_default().to_vec();
                        match decrypt_age(identity, &bytes) {
                            Ok(p) => match String::from_utf8(p) {
                                Ok(text) if text.trim().chars().count() < MIN_SECRET_LEN => self.err(
                                    Origin::file(&path)
                                        .error("secret-too-short", format!("{path} decrypts to fewer than {MIN_SECRET_LEN} characters"))
                                        .with_help("a value this short cannot be told apart from ordinary text, so it could not be kept out of plans and logs; use a longer secret"),
                                ),
                                Ok(text) => {
                                    self.plain.insert(name.to_string(), text);
                                }
                                Err(_) => self.err(Origin::file(&path).error("secret-not-text", "the decrypted secret is not UTF-8 text")),
                            },
                            // An error where it is used, not here: a secret
                            // no host uses never stops a plan.
                            Err(e) => {
                                self.undecryptable.insert(name.to_string(), e);
                            }
                        }
                    }
                }
                _ => self.err(Origin::file(&path).error("plaintext-secret", format!("{path} is not an age-encrypted file"))
                    .with_help("only <name>.age files belong in secrets/; encrypt it with `tidekeeper secrets encrypt` and remove the plaintext from git history")),
            }
        }
        names
    }
}

/// The file that lists who secrets are encrypted to: one age public key a
/// line, `#` comments (like SOPS' creation rules, kept beside the secrets).
pub const RECIPIENTS_FILE: &str = "secrets/.recipients";

/// The recipients listed in `text` (a `.recipients` file), or the line
/// number and text of the first that is not an age public key.
pub fn parse_recipients(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let key = line.split('#').next().unwrap_or("").trim();
        if key.is_empty() {
            continue;
        }
        if <age::x25519::Recipient as std::str::FromStr>::from_str(key).is_err() {
            return Err((n + 1, key.to_string()));
        }
        if !out.iter().any(|k| k == key) {
            out.push(key.to_string());
        }
    }
    Ok(out)
}

/// Strings to blank out of any output: each secret, and each of its lines
/// long enough not to match ordinary text.
pub(super) fn redactions<'s>(plain: impl Iterator<Item = &'s String>) -> Vec<String> {
    use base64::Engine;
    let mut out: Vec<String> = Vec::new();
    for p in plain {
        for cand in std::iter::once(p.trim()).chain(p.lines().map(str::trim)) {
            if cand.chars().count() < MIN_SECRET_LEN {
                continue;
            }
            // The common transforms a template applies (`| upper`, `| b64encode`).
            let b64 = base64::engine::general_purpose::STANDARD.encode(cand);
            for v in [
                cand.to_string(),
                cand.to_uppercase(),
                cand.to_lowercase(),
                b64,
            ] {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
    }
    // Longest first, so a secret is replaced before any of its lines.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// Decrypt one age file with the identity text (for `tidekeeper secrets edit`).
pub(crate) fn decrypt_secret(identity: &str, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
    decrypt_age(identity, ciphertext)
}

/// Decrypt one age file with the identity text.
pub(super) fn decrypt_age(identity: &str, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
    use std::str::FromStr;
    let ids: Vec<age::x25519::Identity> = identity
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| age::x25519::Identity::from_str(l).ok())
        .collect();
    if ids.is_empty() {
        return Err("the identity holds no AGE-SECRET-KEY-1… line".into());
    }
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
        .map_err(|e| e.to_string())?;
    let mut reader = decryptor
        .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
