//! `tidekeeper show HOST`: a host's resources as resolved; `show FILE`: a
//! saved plan.

use super::*;

/// A saved plan when `name` is a file, else the host of that name.
pub(super) fn show(repo: &RepoArgs, name: &str, output: Output) -> CliResult {
    let format = match output {
        Output::Text => ShowFormat::Text,
        Output::Json => ShowFormat::Json,
        Output::Markdown => ShowFormat::Markdown,
    };
    if super::saved::names_a_file(name) {
        return super::saved::show(Path::new(name), format);
    }
    if format == ShowFormat::Markdown {
        return Err(
            CliError::new("-o markdown is for saved plans").help(format!(
                "no file named {name:?}; a host is shown as text or json"
            )),
        );
    }
    show_host(repo, name, format == ShowFormat::Json)
}

fn show_host(repo: &RepoArgs, host: &str, json: bool) -> CliResult {
    let tree = read_tree(repo)?;
    let fleet = load(&tree, Format::Human)?;
    let Some(h) = fleet.host(host) else {
        let names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(
            CliError::new(format!("no host named {host:?} in fleet {:?}", fleet.name)).help(
                match crate::suggest::closest(host, &names) {
                    Some(m) => format!("did you mean {m:?}?"),
                    None => format!("hosts are: {}", names.join(", ")),
                },
            ),
        );
    };
    if json {
        let mut doc = serde_json::to_value(h).expect("host serializes");
        doc["format_version"] = JSON_FORMAT_VERSION.into();
        doc["commit"] = fleet.commit.clone().into();
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(Outcome::Done);
    }
    let mut out = String::new();
    out.push_str(&format!("host {} ({})\n", h.name, h.origin));
    out.push_str(&format!("  provider: {:?}\n", h.provider).to_lowercase());
    if let Some(a) = &h.address {
        out.push_str(&format!("  address: {a}\n"));
    }
    if let Some(s) = &h.server {
        out.push_str(&format!(
            "  server: {}\n",
            serde_json::to_string(s).unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "  ssh: {}@…:{}{}\n",
        h.ssh.user,
        h.ssh.port,
        if h.ssh.sudo { " (sudo)" } else { "" }
    ));
    out.push_str(&format!("  roles: {}\n", h.roles.join(", ")));
    if !h.facts_used.is_empty() {
        out.push_str(&format!(
            "  facts read by templates: {} (unknown here: shown rendered with stand-ins; \
             `tidekeeper show {} --facts` connects and prints them)\n",
            h.facts_used.join(", "),
            h.name
        ));
    }
    out.push_str("  resources:\n");
    for r in &h.resources {
        out.push_str(&format!(
            "    {:<10} {:<48} {}\n",
            r.kind(),
            r.id(),
            describe(r)
        ));
    }
    if !h.handlers.is_empty() {
        out.push_str("  handlers:\n");
        for hd in &h.handlers {
            out.push_str(&format!("    {:<10} {:?}\n", hd.name, hd.action));
        }
    }
    super::pipe::write_stdout(out.as_bytes()).map_err(CliError::new)?;
    Ok(Outcome::Done)
}

pub(super) fn describe(r: &Resource) -> String {
    match r {
        Resource::File(f) => {
            let what = if f.content.sensitive {
                "(sensitive)".to_string()
            } else {
                format!("{} bytes", f.content.bytes.len())
            };
            let mode = f.mode.map(|m| format!(" mode {m:04o}")).unwrap_or_default();
            format!("{what}{mode}")
        }
        Resource::Package { state, .. } => format!("{state:?}").to_lowercase(),
        Resource::Service(s) => format!(
            "{}{}",
            s.state
                .map(|x| format!("{x:?}").to_lowercase())
                .unwrap_or_default(),
            match s.enabled {
                Some(true) => ", enabled",
                Some(false) => ", disabled",
                None => "",
            }
        ),
        Resource::Firewall(f) => {
            format!("incoming {:?}, {} rules", f.incoming, f.rules.len()).to_lowercase()
        }
        Resource::Stack(s) => format!("{} files in {}", s.files.len(), s.dir),
        Resource::User(u) => format!("{} keys", u.authorized_keys.len()),
        Resource::Sysctl { value, .. } | Resource::Setting { value, .. } => value.clone(),
        Resource::Timer(t) => t.on_calendar.join("; "),
        Resource::Cron(c) => format!("{} as {}", c.schedule, c.user),
        Resource::AptRepo(r) => format!("{} {}", r.uris.join(" "), r.suites.join(" ")),
        Resource::Mount(m) => format!("{} {} ({:?})", m.device, m.fstype, m.state).to_lowercase(),
        _ => String::new(),
    }
}

/// `show HOST --facts`: the host's facts as it reports them now, from a
/// read-only plan of it (the probe that plans it asks for them).
pub(super) fn show_facts(
    repo: &RepoArgs,
    host: &str,
    ssh_key: Option<String>,
    json: bool,
) -> CliResult {
    let args = HostArgs {
        hosts: vec![host.to_string()],
        labels: vec![],
        parallel: None,
        ssh_key,
        allow_mass_delete: false,
        allow_destroy: false,
        rollback_after: std::time::Duration::from_secs(120),
    };
    let (fleet, names, opts, _) = prepare(repo, &args)?;
    let opts = std::sync::Arc::new(opts);
    let rt = runtime();
    let pool = engine::Pool::new();
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let fp = super::plan::plan_fleet(&rt, fleet, names, &args, &opts, &clouds, true, &pool);
    let found = fp.results().into_iter().find(|r| r.host == host).map(|r| {
        (
            r.error.clone(),
            r.plan.as_ref().and_then(|p| p.facts.clone()),
        )
    });
    rt.block_on(reconcile::finish(fp, pool.clone()));
    let facts = match found {
        Some((None, Some(f))) => f,
        Some((Some(e), _)) => {
            return Err(CliError::new(format!(
                "cannot read the facts of {host}: {e}"
            )));
        }
        _ => {
            return Err(
                CliError::new(format!("{host} was not reached, so its facts are unknown"))
                    .help("a server that does not exist yet has no facts; apply creates it"),
            );
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&facts).expect("facts serialize")
        );
    } else {
        print!("{}", facts_text(host, &facts));
    }
    Ok(Outcome::Done)
}

fn facts_text(host: &str, f: &crate::model::Facts) -> String {
    let mut out = format!("facts of {host} (as templates read them, facts.NAME):\n");
    for (name, value) in [
        ("arch", f.arch.clone()),
        ("os", f.os.clone()),
        ("release", f.release.clone()),
        ("codename", f.codename.clone()),
        ("debian_version", f.debian_version.clone()),
        ("memory_mb", f.memory_mb.to_string()),
        ("cpus", f.cpus.to_string()),
    ] {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    out.push_str("  interfaces:\n");
    for (name, i) in &f.interfaces {
        let all: Vec<&str> = i.ipv4.iter().chain(&i.ipv6).map(String::as_str).collect();
        out.push_str(&format!("    {name}: {}\n", all.join(" ")));
    }
    out
}
