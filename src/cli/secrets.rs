//! `tidekeeper secrets …`: age-encrypted secrets in the config repo.

use super::*;

/// Who secrets are encrypted to: `--recipient` flags, else
/// secrets/.recipients, else the identity's own key.
fn recipients(keys: &SecretKeys) -> Result<(Vec<String>, &'static str), u8> {
    if !keys.recipients.is_empty() {
        return Ok((keys.recipients.clone(), "--recipient"));
    }
    let file = keys.repo.join(crate::secrets::RECIPIENTS_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => match crate::secrets::parse_recipients(&text) {
            Ok(r) if !r.is_empty() => return Ok((r, crate::secrets::RECIPIENTS_FILE)),
            Ok(_) => {}
            Err((line, key)) => {
                eprintln!(
                    "error: {}:{line}: {key:?} is not an age public key\n  help: one age1… key a line",
                    file.display()
                );
                return Err(EXIT_ERROR);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Err(EXIT_ERROR);
        }
    }
    match &keys.identity {
        Some(id) if !crate::secrets::recipients_of(id).is_empty() => {
            Ok((crate::secrets::recipients_of(id), "the identity"))
        }
        _ => {
            eprintln!(
                "error: no recipients: list them in {}, pass --recipient age1…, or set TIDEKEEPER_AGE_IDENTITY",
                crate::secrets::RECIPIENTS_FILE
            );
            Err(EXIT_ERROR)
        }
    }
}

/// `secrets rekey`: every secret again, to the listed recipients.
fn rekey(keys: &SecretKeys) -> u8 {
    let (to, from) = match recipients(keys) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let Some(id) = &keys.identity else {
        eprintln!(
            "error: rekeying needs an identity that opens every secret: set TIDEKEEPER_AGE_IDENTITY"
        );
        return EXIT_ERROR;
    };
    let dir = keys.repo.join("secrets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".age")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    // Decrypt all first: nothing is rewritten unless every one opens.
    let mut plain = Vec::new();
    for name in &names {
        let path = dir.join(format!("{name}.age"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_ERROR;
            }
        };
        match crate::model::resolve::decrypt_secret(id, &bytes) {
            Ok(p) => plain.push((name, p)),
            Err(e) => {
                eprintln!(
                    "error: cannot decrypt {}: {e}\n  help: nothing was rewritten; rekey with an identity that opens every secret",
                    path.display()
                );
                return EXIT_INVALID;
            }
        }
    }
    for (name, p) in &plain {
        let written = crate::secrets::encrypt(&to, p)
            .and_then(|c| crate::secrets::write_secret(&keys.repo, name, &c));
        if let Err(e) = written {
            eprintln!("error: secrets/{name}.age: {e}");
            return EXIT_ERROR;
        }
    }
    println!(
        "Rekeyed {} secret{} to {} recipient{} (from {from}). Commit them.",
        plain.len(),
        plural(plain.len()),
        to.len(),
        plural(to.len())
    );
    EXIT_OK
}

pub(super) fn secrets_cmd(cmd: SecretsCommand) -> u8 {
    use std::io::Read;
    let (name, keys, edit) = match cmd {
        SecretsCommand::Encrypt { name, keys } => (name, keys, false),
        SecretsCommand::Edit { name, keys } => (name, keys, true),
        SecretsCommand::Rekey { keys } => return rekey(&keys),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        eprintln!("error: secret names are letters, digits, '-', '_' and '.': {name:?}");
        return EXIT_ERROR;
    }
    let (recipients, from) = match recipients(&keys) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let plaintext = if edit {
        let Some(id) = &keys.identity else {
            eprintln!("error: editing needs the identity to decrypt: set TIDEKEEPER_AGE_IDENTITY");
            return EXIT_ERROR;
        };
        let path = keys.repo.join("secrets").join(format!("{name}.age"));
        let current = match std::fs::read(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_ERROR;
            }
        };
        // age does not name an age file's recipients, but counts them: an
        // edit that would encrypt to fewer locks someone out (the daemon too).
        let before = crate::secrets::recipient_count(&current).unwrap_or(0);
        if recipients.len() < before {
            eprintln!(
                "error: {} is encrypted to {before} recipients; this edit would encrypt it to {} (from {from})\n  help: list every recipient in {} (or pass --recipient for each), then edit again",
                path.display(),
                recipients.len(),
                crate::secrets::RECIPIENTS_FILE
            );
            return EXIT_ERROR;
        }
        let plain = match crate::model::resolve::decrypt_secret(id, &current) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot decrypt {}: {e}", path.display());
                return EXIT_INVALID;
            }
        };
        // A private temporary file, removed afterwards.
        let dir = std::env::temp_dir().join(format!("tidekeeper-secret-{}", std::process::id()));
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        };
        if let Err(e) = made {
            eprintln!("error: {}: {e}", dir.display());
            return EXIT_ERROR;
        }
        let file = dir.join(&name);
        let result = (|| -> std::io::Result<Vec<u8>> {
            std::fs::write(&file, &plain)?;
            let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{editor} \"$1\""))
                .arg("sh")
                .arg(&file)
                .status()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "{editor} exited with {status}"
                )));
            }
            std::fs::read(&file)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_ERROR;
            }
        }
    } else {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("error: reading the secret from stdin: {e}");
            return EXIT_ERROR;
        }
        buf
    };
    let written = crate::secrets::encrypt(&recipients, &plaintext)
        .and_then(|c| crate::secrets::write_secret(&keys.repo, &name, &c));
    match written {
        Ok(path) => {
            println!(
                "Wrote {} (encrypted to {} recipient{}). Commit it; the plaintext is never stored.",
                path.display(),
                recipients.len(),
                plural(recipients.len())
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}
