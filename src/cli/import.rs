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
    output: Output,
) -> CliResult {
    crate::model::check::host_name(host).map_err(|e| CliError::new(format!("--as {host}: {e}")))?;
    let tree = read_tree(repo)?;
    // The first server of a new fleet is imported into a repo with no hosts.
    let fleet = load_by(
        &tree,
        Format::Human,
        crate::model::load_before_the_first_host,
    )?;
    let kind = match provider {
        ImportProvider::Hetzner => ProviderKind::Hetzner,
        ImportProvider::Lightsail => ProviderKind::Lightsail,
        ImportProvider::Ec2 => ProviderKind::Ec2,
    };
    let Ok(root) = source::discover(&repo.repo) else {
        return Err(CliError::new(format!(
            "{} is not a config repo",
            repo.repo.display()
        )));
    };
    let file = root.join("hosts").join(format!("{host}.yaml"));
    if file.exists() || fleet.host(host).is_some() {
        return Err(CliError::new(format!(
            "hosts/{host}.yaml exists (or a host {host} is in the fleet); choose another name with --as"
        )));
    }
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let p = provider_of(&clouds, kind)?;
    let rt = runtime();
    let servers = rt.block_on(p.servers()).map_err(CliError::new)?;
    let have = unmanaged(&servers, server, kind)?;
    rt.block_on(p.adopt(have, &fleet.name, host))
        .map_err(CliError::new)?;
    // As adopted: its firewall is the fleet's now, so it is listed.
    let adopted = rt.block_on(p.servers()).map_err(CliError::new)?;
    let have = adopted.iter().find(|s| s.id == have.id).unwrap_or(have);
    let login = rt.block_on(p.login(have)).unwrap_or(None);
    let text = host_file(kind, have, login);
    std::fs::create_dir_all(root.join("hosts"))
        .and_then(|_| std::fs::write(&file, &text))
        .map_err(|e| {
            CliError::new(format!(
                "the server is labelled, but {} could not be written: {e}",
                file.display()
            ))
        })?;
    let ranges = undeclared_networks(&rt, p.as_ref(), &fleet, have);
    let imported = Imported {
        kind,
        server,
        host,
        fleet: &fleet,
        have,
        text: &text,
    };
    imported.report(&ranges, output);
    Ok(Outcome::Done)
}

/// Networks the imported server is attached to that tidekeeper.yaml does
/// not declare: (name, its range as the provider lists it).
fn undeclared_networks(
    rt: &tokio::runtime::Runtime,
    p: &dyn crate::cloud::Provider,
    fleet: &crate::model::Fleet,
    have: &ObservedServer,
) -> Vec<(String, String)> {
    let undeclared: Vec<&str> = have
        .networks
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !fleet.networks.iter().any(|d| d.name == *n))
        .collect();
    if undeclared.is_empty() {
        return Vec::new();
    }
    let known = rt.block_on(p.networks()).unwrap_or_default();
    undeclared
        .iter()
        .map(|n| {
            let range = known
                .iter()
                .find(|k| k.name == *n)
                .map_or("IP-RANGE".to_string(), |k| k.ip_range.clone());
            (n.to_string(), range)
        })
        .collect()
}

/// A server just imported, and its host file.
struct Imported<'a> {
    kind: ProviderKind,
    server: &'a str,
    host: &'a str,
    fleet: &'a crate::model::Fleet,
    have: &'a ObservedServer,
    text: &'a str,
}

impl Imported<'_> {
    /// What was done and what is left to do, as text or one JSON document.
    fn report(&self, ranges: &[(String, String)], output: Output) {
        let Imported {
            kind,
            server,
            host,
            fleet,
            have,
            text,
        } = self;
        let addr = have.address.as_deref().unwrap_or("ADDRESS");
        if output == Output::Json {
            let doc = serde_json::json!({
                "format_version": JSON_FORMAT_VERSION,
                "provider": crate::cloud::plan::provider_name(*kind).to_lowercase(),
                "server": server,
                "id": have.id,
                "host": host,
                "fleet": fleet.name,
                "file": format!("hosts/{host}.yaml"),
                "host_file": text,
                "networks_to_declare": ranges
                    .iter()
                    .map(|(n, r)| serde_json::json!({"name": n, "ip_range": r}))
                    .collect::<Vec<_>>(),
                "address": have.address,
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
            return;
        }
        let renamed = if have.name != *host {
            format!(", renamed to {host}")
        } else {
            String::new()
        };
        println!(
            "Imported {} server {server}{renamed}: labelled as fleet {:?}'s.\nWrote hosts/{host}.yaml:\n\n{text}",
            crate::cloud::plan::provider_name(*kind),
            fleet.name
        );
        if !ranges.is_empty() {
            let lines: String = ranges
                .iter()
                .map(|(n, r)| format!("  {}:\n    ip_range: {r}\n", yaml_str(n)))
                .collect();
            println!(
                "Its networks are labelled the fleet's; declare them in tidekeeper.yaml so the plan keeps them:\n\nnetworks:\n{lines}"
            );
        }
        println!(
            "Next:\n  1. Pin its SSH host key in known_hosts, checked out of band (the provider's console):\n       ssh-keyscan -t ed25519 {addr} >> known_hosts\n  2. Give it its roles in hosts/{host}.yaml, then `tidekeeper plan` and commit."
        );
    }
}

/// The provider of `kind`, or why it cannot be used.
fn provider_of(
    clouds: &crate::cloud::Clouds,
    kind: ProviderKind,
) -> Result<&std::sync::Arc<dyn crate::cloud::Provider>, CliError> {
    clouds.get(kind).ok_or_else(|| {
        let why = clouds
            .missing
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, e)| e.to_string())
            .unwrap_or_else(|| "the provider is not configured in tidekeeper.yaml".into());
        CliError::new(why)
    })
}

/// The server named `name` in the account, when tidekeeper does not manage it yet.
fn unmanaged<'a>(
    servers: &'a [ObservedServer],
    name: &str,
    kind: ProviderKind,
) -> Result<&'a ObservedServer, CliError> {
    let Some(have) = servers.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::new(format!(
            "no {} server named {name:?}",
            crate::cloud::plan::provider_name(kind)
        ))
        .help(format!(
            "the account has: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    if have.labels.contains_key(crate::cloud::MANAGED_BY) {
        return Err(CliError::new(format!(
            "{name} is managed by tidekeeper already (fleet {:?}); it is not imported again",
            have.labels
                .get(crate::cloud::FLEET)
                .cloned()
                .unwrap_or_default()
        )));
    }
    Ok(have)
}

/// The host file of an imported server: what it is now, so the first plan
/// changes nothing on the provider's side.
fn host_file(kind: ProviderKind, s: &ObservedServer, login: Option<&str>) -> String {
    let (size, image, location) = match kind {
        ProviderKind::Lightsail => ("bundle", "blueprint", "zone"),
        ProviderKind::Ec2 => ("type", "image", "region"),
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
    if kind == ProviderKind::Ec2 {
        if let Some(subnet) = &s.subnet {
            out.push_str(&format!("  subnet: {}\n", yaml_str(subnet)));
        }
        if let Some(ip) = &s.private_address {
            out.push_str(&format!("  private_ip: {}\n", yaml_str(ip)));
        }
        if s.delete_protection {
            out.push_str("  termination_protection: true\n");
        }
    }
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
    if let Some(rules) = s.firewall.as_ref().filter(|r| !r.is_empty()) {
        out.push_str("  firewall:\n");
        for r in rules {
            let port = if r.from_port == r.to_port {
                r.from_port.to_string()
            } else {
                format!("{}:{}", r.from_port, r.to_port)
            };
            out.push_str(&format!("    - port: \"{port}\"\n"));
            if r.proto != "tcp" {
                out.push_str(&format!("      proto: {}\n", yaml_str(&r.proto)));
            }
            if !r.from.is_empty() {
                let from: Vec<String> = r.from.iter().map(|f| yaml_str(f)).collect();
                out.push_str(&format!("      from: [{}]\n", from.join(", ")));
            }
        }
    }
    if s.static_ip {
        out.push_str("  static_ip: true\n");
    }
    if !s.networks.is_empty() {
        let nets: Vec<String> = s
            .networks
            .iter()
            .map(|(n, ip)| format!("{{name: {}, ip: {}}}", yaml_str(n), yaml_str(ip)))
            .collect();
        out.push_str(&format!("  networks: [{}]\n", nets.join(", ")));
    }
    if let Some(user) = login {
        out.push_str(&format!(
            "ssh: {{user: {user}, sudo: true}}   # the image lets its keys in as {user}\n"
        ));
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
