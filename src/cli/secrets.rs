//! `tidekeeper secrets …`: age-encrypted secrets in the config repo.

use super::*;

/// Who secrets are encrypted to: `--recipient` flags, else
/// secrets/.recipients, else the identity's own key.
fn recipients(keys: &SecretKeys) -> Result<(Vec<String>, &'static str), CliError> {
    if !keys.recipients.is_empty() {
        return Ok((keys.recipients.clone(), "--recipient"));
    }
    let file = keys.repo.join(crate::secrets::RECIPIENTS_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => match crate::secrets::parse_recipients(&text) {
            Ok(r) if !r.is_empty() => return Ok((r, crate::secrets::RECIPIENTS_FILE)),
            Ok(_) => {}
            Err((line, key)) => {
                return Err(CliError::new(format!(
                    "{}:{line}: {key:?} is not an age public key",
                    file.display()
                ))
                .help("one age1… key a line"));
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CliError::new(format!("{}: {e}", file.display()))),
    }
    match &keys.identity {
        Some(id) if !crate::secrets::recipients_of(id).is_empty() => {
            Ok((crate::secrets::recipients_of(id), "the identity"))
        }
        _ => Err(CliError::new(format!(
            "no recipients: list them in {}, pass --recipient age1…, or set TIDEKEEPER_AGE_IDENTITY",
            crate::secrets::RECIPIENTS_FILE
        ))),
    }
}

/// `secrets rekey`: every secret again, to the listed recipients.
fn rekey(keys: &SecretKeys) -> CliResult {
    let (to, from) = recipients(keys)?;
    let Some(id) = &keys.identity else {
        return Err(CliError::new(
            "rekeying needs an identity that opens every secret: set TIDEKEEPER_AGE_IDENTITY",
        ));
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
        let bytes =
            std::fs::read(&path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        let p = crate::model::resolve::decrypt_secret(id, &bytes).map_err(|e| {
            CliError::invalid(format!("cannot decrypt {}: {e}", path.display()))
                .help("nothing was rewritten; rekey with an identity that opens every secret")
        })?;
        plain.push((name, p));
    }
    for (name, p) in &plain {
        crate::secrets::encrypt(&to, p)
            .and_then(|c| crate::secrets::write_secret(&keys.repo, name, &c))
            .map_err(|e| CliError::new(format!("secrets/{name}.age: {e}")))?;
    }
    println!(
        "Rekeyed {} secret{} to {} recipient{} (from {from}). Commit them.",
        plain.len(),
        plural(plain.len()),
        to.len(),
        plural(to.len())
    );
    Ok(Outcome::Done)
}

/// `secrets encrypt` (the secret from stdin) and `secrets edit` (in
/// `$EDITOR`): secrets/NAME.age written, encrypted to the recipients.
pub(super) fn secrets_cmd(cmd: SecretsCommand) -> CliResult {
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
        return Err(CliError::new(format!(
            "secret names are letters, digits, '-', '_' and '.': {name:?}"
        )));
    }
    let (recipients, from) = recipients(&keys)?;
    let plaintext = if edit {
        edited(&keys, &name, recipients.len(), from)?
    } else {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::new(format!("reading the secret from stdin: {e}")))?;
        buf
    };
    let path = crate::secrets::encrypt(&recipients, &plaintext)
        .and_then(|c| crate::secrets::write_secret(&keys.repo, &name, &c))
        .map_err(CliError::new)?;
    println!(
        "Wrote {} (encrypted to {} recipient{}). Commit it; the plaintext is never stored.",
        path.display(),
        recipients.len(),
        plural(recipients.len())
    );
    Ok(Outcome::Done)
}

/// secrets/NAME.age decrypted, edited in `$EDITOR`, and the result, when
/// it goes to no fewer than the `recipients` it had.
fn edited(
    keys: &SecretKeys,
    name: &str,
    recipients: usize,
    from: &str,
) -> Result<Vec<u8>, CliError> {
    let Some(id) = &keys.identity else {
        return Err(CliError::new(
            "editing needs the identity to decrypt: set TIDEKEEPER_AGE_IDENTITY",
        ));
    };
    let path = keys.repo.join("secrets").join(format!("{name}.age"));
    let current =
        std::fs::read(&path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    // age does not name an age file's recipients, but counts them: an
    // edit that would encrypt to fewer locks someone out (the daemon too).
    let before = crate::secrets::recipient_count(&current).unwrap_or(0);
    if recipients < before {
        return Err(CliError::new(format!(
            "{} is encrypted to {before} recipients; this edit would encrypt it to {recipients} (from {from})",
            path.display(),
        ))
        .help(format!(
            "list every recipient in {} (or pass --recipient for each), then edit again",
            crate::secrets::RECIPIENTS_FILE
        )));
    }
    let plain = crate::model::resolve::decrypt_secret(id, &current)
        .map_err(|e| CliError::invalid(format!("cannot decrypt {}: {e}", path.display())))?;
    in_editor(name, &plain)
}

/// `plain` edited in `$EDITOR`, in a private temporary file removed afterwards.
fn in_editor(name: &str, plain: &[u8]) -> Result<Vec<u8>, CliError> {
    let dir = std::env::temp_dir().join(format!("tidekeeper-secret-{}", std::process::id()));
    let made = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir)
    };
    made.map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
    let file = dir.join(name);
    let result = (|| -> std::io::Result<Vec<u8>> {
        std::fs::write(&file, plain)?;
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
    result.map_err(CliError::new)
}
