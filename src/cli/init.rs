//! `tidekeeper init` and `tidekeeper demo`: a new config repo from the
//! template (and what it still needs), and the demo on this machine.

use super::*;
use crate::model::desired::AwsCredentials;

/// The template as `init` writes it: each config file opens with the
/// modeline that gives editors its schema, and the schemas are included.
fn repo_tree() -> ConfigTree {
    use crate::model::schema::{self, ConfigFile};
    let template = source::template_tree();
    let mut tree = ConfigTree::new();
    for (path, entry) in template.paths() {
        if let source::Entry::File { bytes, .. } = entry {
            let text = std::str::from_utf8(bytes).ok();
            match text.and_then(|t| schema::with_modeline(path, t)) {
                Some(t) => tree.insert_file(path, t),
                None => tree.insert_file(path, bytes.clone()),
            }
        }
    }
    for f in ConfigFile::ALL {
        let text = serde_json::to_string_pretty(&f.schema()).expect("json") + "\n";
        tree.insert_file(format!("{}/{}", schema::DIR, f.file_name()), text);
    }
    tree
}

pub(super) fn init(dir: &Path) -> CliResult {
    let tree = repo_tree();
    let commit = source::init_repo(
        dir,
        &tree,
        "Start a tidekeeper fleet from the example template",
    )
    .map_err(CliError::new)?;
    println!(
        "Created config repo {} (commit {}).",
        dir.display(),
        &commit[..12]
    );
    if let Ok(fleet) = model::load(&tree) {
        print!("{}", next_steps(&fleet, &tree, dir));
    }
    Ok(Outcome::Done)
}

/// Documentation addresses (RFC 5737): a host file that still has one is
/// the template's placeholder.
fn is_placeholder(addr: &str) -> bool {
    ["192.0.2.", "198.51.100.", "203.0.113."]
        .iter()
        .any(|p| addr.starts_with(p))
}

/// What a new config repo still needs before its first apply, and the
/// commands to run next. Pure.
pub(super) fn next_steps(fleet: &Fleet, tree: &ConfigTree, dir: &Path) -> String {
    use crate::model::desired::ProviderKind;
    let mut todo: Vec<String> = Vec::new();
    for h in &fleet.hosts {
        if let Some(a) = h.address.as_deref().filter(|a| is_placeholder(a)) {
            todo.push(format!(
                "{}: {a} is a placeholder; set the address in its host file and pin the server's SSH key in known_hosts (`ssh-keyscan -t ed25519 ADDRESS`, checked out of band)",
                h.name
            ));
        }
    }
    let names = |p: ProviderKind| -> Vec<&str> {
        fleet
            .hosts
            .iter()
            .filter(|h| h.provider == p)
            .map(|h| h.name.as_str())
            .collect()
    };
    let hetzner = names(ProviderKind::Hetzner);
    if !hetzner.is_empty() {
        todo.push(format!(
            "{}: Hetzner Cloud servers, created by the first apply; put an API token in {}",
            hetzner.join(", "),
            fleet.settings.hetzner.token_env
        ));
    }
    let lightsail = names(ProviderKind::Lightsail);
    if let (false, Some(l)) = (lightsail.is_empty(), &fleet.settings.lightsail) {
        let region = l.region.as_deref().unwrap_or("the region of AWS_REGION");
        let credentials = match &l.credentials {
            AwsCredentials::Env {
                access_key_env,
                secret_key_env,
                ..
            } => format!("put AWS credentials in {access_key_env} and {secret_key_env}"),
            AwsCredentials::Chain { profile: Some(p) } => {
                format!("AWS credentials come from the profile {p:?} (aws configure / aws sso login)")
            }
            AwsCredentials::Chain { profile: None } => "AWS credentials are found as the AWS CLI finds them: \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE, SSO, or an instance role"
                .to_string(),
        };
        todo.push(format!(
            "{}: Lightsail instances in {region}, created by the first apply; {credentials}",
            lightsail.join(", "),
        ));
    }
    let secrets: Vec<String> = tree
        .under("secrets")
        .filter_map(|(p, _)| {
            p.strip_prefix("secrets/")?
                .strip_suffix(".age")
                .map(String::from)
        })
        .collect();
    for s in &secrets {
        todo.push(format!(
            "secrets/{s}.age is encrypted to a throwaway key: replace it with `tidekeeper secrets encrypt {s}`, with your own age identity in {}",
            fleet.settings.secrets_identity_env
        ));
    }
    if let Some(f) = &fleet.settings.forge {
        todo.push(format!(
            "plan comments on {}: put a token in {}",
            f.repo, f.token_env
        ));
    }
    let mut out = String::new();
    if !todo.is_empty() {
        out.push_str("\nBefore the first apply:\n");
        for t in todo {
            out.push_str(&format!("  - {t}\n"));
        }
    }
    out.push_str(&format!(
        "\nThen:\n  cd {}\n  tidekeeper validate --worktree   # after each edit\n  git commit -am \"our fleet\"\n  tidekeeper plan\n",
        dir.display()
    ));
    out
}

/// The demo's own host: this machine, confined to a directory next to the repo.
pub(super) const DEMO_HOST: &str = "demo-local";

pub(super) const DEMO_ROLE: &str = r#"description: What the demo applies to this machine, confined to a directory (see hosts/demo-local.yaml).
directories:
  - {path: /etc/acme, mode: "0755"}
  - {path: /srv/www, mode: "0755"}
files:
  - {path: /etc/motd, source: motd, mode: "0644"}
  - {path: /etc/acme/fleet.json, template: demo-fleet.json.j2, mode: "0644"}
  - path: /srv/www/index.html
    content: |
      <h1>Hello from the acme fleet</h1>
    mode: "0644"
symlinks:
  - {path: /srv/www/current, target: /srv/www/index.html}
commands:
  - name: first-boot-marker
    run: date -u > "${TK_ROOT:-}/etc/acme/.first-boot"
    creates: /etc/acme/.first-boot
"#;

pub(super) const DEMO_TEMPLATE: &str = r#"{"fleet": {{ fleet.name | tojson }}, "host": {{ host.name | tojson }}, "admin": {{ admin_email | tojson }}}
"#;

/// `tidekeeper demo`: the template repo (made when missing) validated,
/// this machine added to it and reconciled, then the daemon following it.
pub(super) fn demo(dir: &Path, no_daemon: bool, listen: std::net::SocketAddr) -> CliResult {
    if !dir.join(".git").exists() {
        init(dir)?;
    } else {
        println!("Using the existing demo repo {}.", dir.display());
    }
    let args = RepoArgs {
        repo: dir.to_path_buf(),
        refname: "HEAD".into(),
    };
    validate(&args, false, Format::Human)?;
    // The cloud and existing hosts of the example cannot be reached from
    // here, so the demo adds this machine, confined to a directory, and
    // reconciles it: plan, apply, plan again.
    let abs =
        std::fs::canonicalize(dir).map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
    let root = PathBuf::from(format!("{}-root", abs.display()));
    let host_file = dir.join("hosts").join(format!("{DEMO_HOST}.yaml"));
    if !host_file.exists() {
        add_demo_host(dir, &root).map_err(|e| {
            CliError::new(format!(
                "cannot add the demo host to {}: {e}",
                dir.display()
            ))
        })?;
    }
    let reconciled = reconcile_demo_host(&args, &root)?;
    if reconciled != Outcome::Done {
        return Ok(reconciled);
    }
    if no_daemon {
        println!(
            "\nTry it: edit {0}/etc/motd by hand and run `tidekeeper plan --repo {1} --host {DEMO_HOST}` to see the drift;\n\
             `tidekeeper apply --repo {1} --host {DEMO_HOST}` puts it back. Edit roles/demo-local.yaml, commit, and plan again.",
            root.display(),
            dir.display()
        );
        return Ok(Outcome::Done);
    }
    follow_demo_repo(&abs, &root, listen)
}

/// The demo host (this machine, confined under `root`), its role and
/// template written into the repo at `dir` and committed.
fn add_demo_host(dir: &Path, root: &Path) -> Result<String, String> {
    std::fs::write(
        dir.join("hosts").join(format!("{DEMO_HOST}.yaml")),
        format!(
            "# This machine, in pull mode, confined to a directory for the demo.\n\
             provider: local\nroot: {}\nroles: [demo-local]\n",
            root.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("roles/demo-local.yaml"), DEMO_ROLE).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("templates/demo-fleet.json.j2"), DEMO_TEMPLATE)
        .map_err(|e| e.to_string())?;
    let git = git2::Repository::open(dir).map_err(|e| e.to_string())?;
    source::commit_all(
        &git,
        "demo: reconcile this machine, confined to a directory",
    )
    .map_err(|e| e.to_string())
}

/// Plan, apply and plan again the demo host, each shown as the command
/// that does it; stops at the first that is not done.
fn reconcile_demo_host(args: &RepoArgs, root: &Path) -> CliResult {
    let hosts = HostArgs {
        hosts: vec![DEMO_HOST.into()],
        labels: vec![],
        parallel: None,
        ssh_key: None,
        allow_mass_delete: false,
        allow_destroy: false,
        rollback_after: std::time::Duration::from_secs(120),
    };
    println!(
        "\n$ tidekeeper plan --host {DEMO_HOST}        # what would change under {}",
        root.display()
    );
    let planned = plan(args, &hosts, None, PlanFormat::Text, false, false, None)?;
    if planned != Outcome::Done {
        return Ok(planned);
    }
    println!("\n$ tidekeeper apply --host {DEMO_HOST} --yes");
    let applied = apply(args, &hosts, true, false, Output::Text)?;
    if applied != Outcome::Done {
        return Ok(applied);
    }
    println!("\n$ tidekeeper plan --host {DEMO_HOST}        # again: nothing left to do");
    plan(args, &hosts, None, PlanFormat::Text, false, false, None)
}

/// The daemon, following the demo repo at `abs` and reconciling only the demo host.
fn follow_demo_repo(abs: &Path, root: &Path, listen: std::net::SocketAddr) -> CliResult {
    let branch = git2::Repository::open(abs)
        .ok()
        .and_then(|r| {
            r.head()
                .ok()
                .and_then(|h| h.shorthand().ok().map(String::from))
        })
        .unwrap_or_else(|| "main".into());
    println!(
        "\nNow the daemon: it follows branch {branch} of {repo} and reconciles every commit.\n\
         Status page: http://{listen}/   (also /status, /metrics, /badges/fleet.svg)\n\
         Try: edit {repo}/roles/demo-local.yaml (e.g. the text of /srv/www/index.html), then\n\
         \x20 git -C {repo} commit -qam 'change the page'\n\
         and watch {root}/srv/www/index.html change; edit {root}/etc/motd by hand to see drift.\n\
         The daemon reconciles only {DEMO_HOST}: the example's other hosts are not reachable from here.\n\
         Ctrl-C stops the daemon.\n",
        repo = abs.display(),
        root = root.display(),
    );
    run_daemon(crate::daemon::Config {
        repo: abs.display().to_string(),
        branch,
        state_dir: PathBuf::from(format!("{}-state", abs.display())),
        listen,
        poll: Some(std::time::Duration::from_secs(10)),
        drift: Some(std::time::Duration::from_secs(30)),
        webhook_secret: None,
        api_token: None,
        ssh_key: None,
        watch: true,
        hosts: vec![DEMO_HOST.into()],
        labels: vec![],
        git: Default::default(),
        rollback_after: std::time::Duration::from_secs(120),
        proposals: vec![],
        worker: this_exe(),
    })
}
