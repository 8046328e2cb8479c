//! `tidekeeper secrets …`: age-encrypted secrets in the config repo.

use super::*;

pub(super) fn secrets_cmd(cmd: SecretsCommand) -> u8 {
    use std::io::Read;
    let (name, keys, edit) = match cmd {
        SecretsCommand::Encrypt { name, keys } => (name, keys, false),
        SecretsCommand::Edit { name, keys } => (name, keys, true),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        eprintln!("error: secret names are letters, digits, '-', '_' and '.': {name:?}");
        return EXIT_ERROR;
    }
    let mut recipients = keys.recipients.clone();
    if recipients.is_empty()
        && let Some(id) = &keys.identity
    {
        recipients = crate::secrets::recipients_of(id);
    }
    if recipients.is_empty() {
        eprintln!("error: no recipients: pass --recipient age1… or set TIDEKEEPER_AGE_IDENTITY");
        return EXIT_ERROR;
    }
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
