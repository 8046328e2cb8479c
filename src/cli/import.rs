//! `tidekeeper import PROVIDER SERVER --as HOST`: adopt a server made
//! elsewhere instead of labelling it by hand. The server gets the fleet's
//! ownership labels (and its host's name, where the provider can rename),
//! and `hosts/HOST.yaml` is written to the work tree for review.

use super::*;
use crate::cloud::ObservedServer;
use crate::model::desired::ProviderKind;

pub(super) fn import_cmd(
    provider: ImportProvider,
    server: &str,
    host: &str,
    repo: &RepoArgs,
) -> u8 {
    if let Err(e) = crate::model::check::host_name(host) {
        eprintln!("error: --as {host}: {e}");
        return EXIT_ERROR;
    }
    let tree = match read_tree(repo) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let fleet = match load(&tree, Format::Human) {
        Ok(f) => f,
        Err(c) => return c,
    };
    let kind = match provider {
        ImportProvider::Hetzner => ProviderKind::Hetzner,
        ImportProvider::Lightsail => ProviderKind::Lightsail,
    };
    let Ok(root) = source::discover(&repo.repo) else {
        eprintln!("error: {} is not a config repo", repo.repo.display());
        return EXIT_ERROR;
    };
    let file = root.join("hosts").join(format!("{host}.yaml"));
    if file.exists() || fleet.host(host).is_some() {
        eprintln!(
            "error: hosts/{host}.yaml exists (or a host {host} is in the fleet); choose another name with --as"
        );
        return EXIT_ERROR;
    }
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let Some(p) = clouds.get(kind) else {
        let why = clouds
            .missing
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, e)| e.to_string())
            .unwrap_or_else(|| "the provider is not configured in tidekeeper.yaml".into());
        eprintln!("error: {why}");
        return EXIT_ERROR;
    };
    let rt = runtime();
    let servers = match rt.block_on(p.servers()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let Some(have) = servers.iter().find(|s| s.name == server) else {
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "error: no {} server named {server:?}\n  help: the account has: {}",
            crate::cloud::plan::provider_name(kind),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return EXIT_ERROR;
    };
    if have.labels.contains_key(crate::cloud::MANAGED_BY) {
        eprintln!(
            "error: {server} is managed by tidekeeper already (fleet {:?}); it is not imported again",
            have.labels
                .get(crate::cloud::FLEET)
                .cloned()
                .unwrap_or_default()
        );
        return EXIT_ERROR;
    }
    if let Err(e) = rt.block_on(p.adopt(have, &fleet.name, host)) {
        eprintln!("error: {e}");
        return EXIT_ERROR;
    }
    let text = host_file(kind, have);
    if let Err(e) =
        std::fs::create_dir_all(root.join("hosts")).and_then(|_| std::fs::write(&file, &text))
    {
        eprintln!(
            "error: the server is labelled, but {} could not be written: {e}",
            file.display()
        );
        return EXIT_ERROR;
    }
    let renamed = if have.name != host {
        format!(", renamed to {host}")
    } else {
        String::new()
    };
    println!(
        "Imported {} server {server}{renamed}: labelled as fleet {:?}'s.\nWrote hosts/{host}.yaml:\n\n{text}",
        crate::cloud::plan::provider_name(kind),
        fleet.name
    );
    let addr = have.address.as_deref().unwrap_or("ADDRESS");
    println!(
        "Next:\n  1. Pin its SSH host key in known_hosts, checked out of band (the provider's console):\n       ssh-keyscan -t ed25519 {addr} >> known_hosts\n  2. Give it its roles in hosts/{host}.yaml, then `tidekeeper plan` and commit."
    );
    EXIT_OK
}

/// The host file of an imported server: what it is now, so the first plan
/// changes nothing on the provider's side.
fn host_file(kind: ProviderKind, s: &ObservedServer) -> String {
    let (size, image, location) = match kind {
        ProviderKind::Lightsail => ("bundle", "blueprint", "zone"),
        _ => ("type", "image", "location"),
    };
    let mut out = format!(
        "# Imported by `tidekeeper import` from the {} server {:?}.\nprovider: {}\nserver:\n  {size}: {}\n",
        crate::cloud::plan::provider_name(kind),
        s.name,
        crate::cloud::plan::provider_name(kind).to_lowercase(),
        yaml_str(&s.size),
    );
    match &s.image {
        Some(i) => out.push_str(&format!("  {image}: {}\n", yaml_str(i))),
        None => out.push_str(&format!(
            "  {image}: FILL-IN   # the provider did not say\n"
        )),
    }
    out.push_str(&format!("  {location}: {}\n", yaml_str(&s.location)));
    let own: Vec<(&String, &String)> = s
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("tidekeeper") && k.as_str() != crate::cloud::MANAGED_BY)
        .collect();
    if !own.is_empty() {
        out.push_str("  labels:\n");
        for (k, v) in own {
            out.push_str(&format!("    {}: {}\n", yaml_str(k), yaml_str(v)));
        }
    }
    out.push_str("roles: []\n");
    out
}

/// A value as a YAML scalar: plain when safe, else double-quoted (labels
/// are written by whoever made the server).
fn yaml_str(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !v.starts_with(['-', '.', '/'])
        && !matches!(
            v,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        );
    if plain && v.parse::<f64>().is_err() {
        v.to_string()
    } else {
        serde_json::to_string(v).unwrap_or_default()
    }
}
