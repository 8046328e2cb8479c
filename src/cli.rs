//! The `tidekeeper` command: argument handling and glue, no logic of its own.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::engine;
use crate::model::{self, Fleet, desired::Resource};
use crate::reconcile;
use crate::source::{self, ConfigTree};

/// Exit codes scripts can rely on.
pub const EXIT_OK: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "tidekeeper",
    version,
    about = "GitOps reconciler for fleets of plain Linux servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// The config repo (a git repository); read from its commits, never its work tree.
    #[arg(long, default_value = ".", env = "TIDEKEEPER_REPO")]
    pub repo: PathBuf,
    /// Branch, tag or commit to read.
    #[arg(long = "ref", default_value = "HEAD")]
    pub refname: String,
}

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// Only these hosts (repeatable); default: every host in the fleet.
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Hosts worked on at once (default: the fleet's `defaults.parallelism`).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Private key for SSH (default: the fleet's `defaults.ssh.key`, else ssh-agent).
    #[arg(long, env = "TIDEKEEPER_SSH_KEY")]
    pub ssh_key: Option<String>,
    /// Permit deleting more than 20 resources, or more than a quarter of a host's.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Permit deleting or replacing cloud servers whose hosts do not set `allow_destroy: true`.
    #[arg(long)]
    pub allow_destroy: bool,
    /// A host rolls back a change to SSH, firewall, sudo or network settings
    /// unless a new SSH connection proves access within this time.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub rollback_after: std::time::Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Errors with source snippets.
    Human,
    /// One `file:line:column: error[code]: message` line per problem.
    Short,
    /// Machine-readable JSON.
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `500ms`, `30s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 60s"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Evaluate every `test_*` rule in policies/*.rego; each must be true.
    Test {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Every job with its next run times, in each job's own time zone.
    List {
        #[command(flatten)]
        repo: RepoArgs,
        /// How many upcoming runs to show per job.
        #[arg(long, default_value_t = 3)]
        next: usize,
    },
    /// Run a job now (its window is still respected unless --ignore-window).
    Run {
        job: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        hosts: HostArgs,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
        /// Run even outside the job's maintenance window (by hand, on purpose).
        #[arg(long)]
        ignore_window: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Encrypt standard input into secrets/NAME.age (then commit it).
    Encrypt {
        name: String,
        #[command(flatten)]
        keys: SecretKeys,
    },
    /// Decrypt secrets/NAME.age into $EDITOR and encrypt the result again.
    Edit {
        name: String,
        #[command(flatten)]
        keys: SecretKeys,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SecretKeys {
    /// The config repo's work tree.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// age public keys to encrypt to (repeatable); default: the identity's own.
    #[arg(long = "recipient", value_name = "AGE1…")]
    pub recipients: Vec<String>,
    /// The age identity (its text), as the daemon gets it.
    #[arg(long, env = "TIDEKEEPER_AGE_IDENTITY", hide_env_values = true)]
    pub identity: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the config repo at a commit; report every problem with file:line:column.
    Validate {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// Print a host's fully resolved desired state.
    Show {
        /// Host name (as in `tidekeeper validate`'s list).
        host: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what would change on the hosts (read-only).
    Plan {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        hosts: HostArgs,
        /// Print the plan as JSON.
        #[arg(long, conflicts_with = "markdown")]
        json: bool,
        /// Print the plan as the pull-request comment the daemon posts (markdown).
        #[arg(long)]
        markdown: bool,
        /// Exit 0 when nothing would change, 2 when something would, 1 on errors.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan `--ref` as a proposal from someone not trusted (a pull request):
        /// with `--base`'s settings, only reading what the base manages, running
        /// nothing of the proposal and decrypting no secret. For CI jobs that plan PRs.
        #[arg(long)]
        untrusted: bool,
        /// The trusted branch a proposal is planned against (with --untrusted).
        #[arg(long, default_value = "main", requires = "untrusted")]
        base: String,
    },
    /// Plan, show the plan, and apply exactly that plan.
    Apply {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        hosts: HostArgs,
        /// Apply without asking.
        #[arg(long, short = 'y')]
        yes: bool,
        /// One canary host first, then `--parallel` at a time; stop at the first failure.
        #[arg(long)]
        rolling: bool,
    },
    /// Run the reconciler: poll (and take webhooks), apply new commits, watch for drift, report back.
    Run {
        /// The config repo to follow: a path or a URL git can fetch (file://).
        #[arg(long, env = "TIDEKEEPER_REPO")]
        repo: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Where the daemon keeps its mirror of the repo.
        #[arg(
            long,
            default_value = "/var/lib/tidekeeper-daemon",
            env = "TIDEKEEPER_STATE_DIR"
        )]
        state_dir: PathBuf,
        /// Address of the HTTP server (status page, metrics, webhook).
        #[arg(long, default_value = "127.0.0.1:8420")]
        listen: std::net::SocketAddr,
        /// Poll interval (e.g. 60s, 5m); default: the fleet's `intervals.poll`.
        #[arg(long, value_parser = parse_duration)]
        poll: Option<std::time::Duration>,
        /// Drift check interval; default: the fleet's `intervals.drift`.
        #[arg(long, value_parser = parse_duration)]
        drift: Option<std::time::Duration>,
        /// Shared secret for webhook signatures (GitHub or Gitea HMAC-SHA256).
        #[arg(long, env = "TIDEKEEPER_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
        /// Token that authorizes actions over HTTP (`POST /retry`, sent as
        /// `Authorization: Bearer …`); without it (and a webhook secret) they are refused.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Private key for SSH (default: the fleet's `defaults.ssh.key`, else ssh-agent).
        #[arg(long, env = "TIDEKEEPER_SSH_KEY")]
        ssh_key: Option<String>,
        /// Do not watch a local repo for commits (polling and webhooks still work).
        #[arg(long)]
        no_watch: bool,
        /// Only these hosts (repeatable), e.g. a server reconciling itself in pull mode.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Private key for fetching an ssh:// config repo (default: --ssh-key, else ssh-agent).
        #[arg(long, env = "TIDEKEEPER_GIT_SSH_KEY")]
        git_ssh_key: Option<PathBuf>,
        /// known_hosts file pinning the git server's host key (required for ssh://).
        #[arg(
            long,
            env = "TIDEKEEPER_GIT_KNOWN_HOSTS",
            default_value = "/etc/tidekeeper/git_known_hosts"
        )]
        git_known_hosts: PathBuf,
        /// Token for an https:// config repo.
        #[arg(long, env = "TIDEKEEPER_GIT_TOKEN", hide_env_values = true)]
        git_token: Option<String>,
        /// A host rolls back a risky change unless access is proven within this time.
        #[arg(long, value_parser = parse_duration, default_value = "120s")]
        rollback_after: std::time::Duration,
        /// Refs of proposed changes to plan read-only (repeatable; globs).
        #[arg(long = "proposals", default_value = "refs/pull/*/head")]
        proposals: Vec<String>,
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Ask a running daemon to retry its quarantined commit.
    Retry {
        /// The daemon's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8420")]
        daemon: std::net::SocketAddr,
        /// The daemon's API token.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
    },
    /// Stop a running daemon's applies and jobs now (planning and reporting go on).
    Suspend {
        /// The daemon's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8420")]
        daemon: std::net::SocketAddr,
        /// Why, for the status branch.
        #[arg(long)]
        reason: String,
        /// Who, for the status branch (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// The daemon's API token.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
    },
    /// Undo `tidekeeper suspend`.
    Resume {
        /// The daemon's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8420")]
        daemon: std::net::SocketAddr,
        /// The daemon's API token.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
    },
    /// Encrypt and edit age secrets in a config repo's work tree.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// The maintenance calendar: list jobs with their next runs, or run one now.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Policy-as-code: run the repo's Rego tests (`test_*` rules).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create a new config repo from the built-in example fleet.
    Init {
        /// Directory to create (must not exist or be empty).
        dir: PathBuf,
    },
    /// Set up the example fleet in a directory and show what tidekeeper makes of it.
    Demo {
        /// Where to put the demo config repo.
        #[arg(default_value = "tidekeeper-demo")]
        dir: PathBuf,
        /// Stop after the first reconcile instead of starting the daemon.
        #[arg(long)]
        no_daemon: bool,
        /// Address of the demo daemon's status page.
        #[arg(long, default_value = "127.0.0.1:8420")]
        listen: std::net::SocketAddr,
    },
}

pub fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Validate { repo, format } => validate(&repo, format),
        Command::Show { host, repo, json } => show(&repo, &host, json),
        Command::Plan {
            repo,
            hosts,
            json,
            markdown,
            detailed_exitcode,
            untrusted,
            base,
        } => plan(
            &repo,
            &hosts,
            untrusted.then_some(base.as_str()),
            if json {
                PlanFormat::Json
            } else if markdown {
                PlanFormat::Markdown
            } else {
                PlanFormat::Text
            },
            detailed_exitcode,
        ),
        Command::Apply {
            repo,
            hosts,
            yes,
            rolling,
        } => apply(&repo, &hosts, yes, rolling),
        Command::Run {
            repo,
            branch,
            state_dir,
            listen,
            poll,
            drift,
            webhook_secret,
            api_token,
            ssh_key,
            no_watch,
            hosts,
            git_ssh_key,
            git_known_hosts,
            git_token,
            rollback_after,
            proposals,
            log_format,
        } => run_daemon(
            crate::daemon::Config {
                repo,
                branch,
                state_dir,
                listen,
                poll,
                drift,
                webhook_secret,
                api_token,
                ssh_key: ssh_key.clone(),
                watch: !no_watch,
                rollback_after,
                proposals,
                hosts,
                git: crate::daemon::mirror::Access {
                    ssh_key: git_ssh_key.or_else(|| ssh_key.as_ref().map(PathBuf::from)),
                    known_hosts: std::fs::read_to_string(&git_known_hosts)
                        .map(|t| crate::daemon::mirror::Access::parse_known_hosts(&t))
                        .unwrap_or_default(),
                    token: git_token,
                },
            },
            log_format,
        ),
        Command::Retry { daemon, api_token } => post_daemon(
            daemon,
            "/retry",
            api_token.as_deref(),
            "",
            "The daemon at {addr} will retry its quarantined commit.",
        ),
        Command::Suspend {
            daemon,
            reason,
            by,
            api_token,
        } => {
            let by = by
                .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "an operator".into()));
            let body = serde_json::json!({ "by": by, "reason": reason }).to_string();
            post_daemon(
                daemon,
                "/suspend",
                api_token.as_deref(),
                &body,
                "The daemon at {addr} is suspended: no applies, no jobs, until `tidekeeper resume`.",
            )
        }
        Command::Resume { daemon, api_token } => post_daemon(
            daemon,
            "/resume",
            api_token.as_deref(),
            "",
            "The daemon at {addr} applies and runs jobs again.",
        ),
        Command::Secrets { command } => secrets_cmd(command),
        Command::Schedule { command } => schedule_cmd(command),
        Command::Policy {
            command: PolicyCommand::Test { repo },
        } => policy_test(&repo),
        Command::Init { dir } => init(&dir),
        Command::Demo {
            dir,
            no_daemon,
            listen,
        } => demo(&dir, no_daemon, listen),
    };
    ExitCode::from(code)
}

fn read_tree(repo: &RepoArgs) -> Result<ConfigTree, u8> {
    ConfigTree::from_git(&repo.repo, &repo.refname).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_USAGE
    })
}

/// Load the fleet, printing diagnostics on failure.
fn load(tree: &ConfigTree, format: Format) -> Result<Fleet, u8> {
    model::load(tree).map_err(|diags| {
        let n = diags.len();
        match format {
            Format::Json => println!("{}", serde_json::json!({ "valid": false, "errors": diags })),
            Format::Short => eprint!("{diags}"),
            Format::Human => {
                let color =
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                eprint!("{}", model::diag::render(&diags, &|f| tree.text(f), color));
            }
        }
        if format != Format::Json {
            eprintln!(
                "{n} error{} in the config repo{}",
                if n == 1 { "" } else { "s" },
                at_commit(tree)
            );
        }
        EXIT_INVALID
    })
}

fn at_commit(tree: &ConfigTree) -> String {
    tree.commit
        .as_deref()
        .map(|c| format!(" at {}", &c[..c.len().min(12)]))
        .unwrap_or_default()
}

fn validate(repo: &RepoArgs, format: Format) -> u8 {
    let tree = match read_tree(repo) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let fleet = match load(&tree, format) {
        Ok(f) => f,
        Err(c) => return c,
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "valid": true,
                "fleet": fleet.name,
                "commit": fleet.commit,
                "hosts": fleet.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
                "jobs": fleet.jobs.iter().map(|j| &j.name).collect::<Vec<_>>(),
            })
        ),
        _ => println!("{}", summary(&fleet, &tree)),
    }
    EXIT_OK
}

fn summary(fleet: &Fleet, tree: &ConfigTree) -> String {
    let resources: usize = fleet.hosts.iter().map(|h| h.resources.len()).sum();
    let mut s = format!(
        "valid: fleet {:?}{}: {} host{}, {} resource{}, {} maintenance job{}\n",
        fleet.name,
        at_commit(tree),
        fleet.hosts.len(),
        plural(fleet.hosts.len()),
        resources,
        plural(resources),
        fleet.jobs.len(),
        plural(fleet.jobs.len()),
    );
    for h in &fleet.hosts {
        s.push_str(&format!(
            "  {:<16} {:<10} {:>3} resources  roles: {}\n",
            h.name,
            format!("{:?}", h.provider).to_lowercase(),
            h.resources.len(),
            h.roles.join(", ")
        ));
    }
    s.pop();
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn show(repo: &RepoArgs, host: &str, json: bool) -> u8 {
    let tree = match read_tree(repo) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let fleet = match load(&tree, Format::Human) {
        Ok(f) => f,
        Err(c) => return c,
    };
    let Some(h) = fleet.host(host) else {
        let names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
        eprintln!(
            "error: no host named {host:?} in fleet {:?}\n  help: hosts are: {}",
            fleet.name,
            names.join(", ")
        );
        return EXIT_USAGE;
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(h).expect("host serializes")
        );
        return EXIT_OK;
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
    let _ = std::io::stdout().write_all(out.as_bytes());
    EXIT_OK
}

fn describe(r: &Resource) -> String {
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
        Resource::Sysctl { value, .. } => value.clone(),
        Resource::Timer(t) => t.on_calendar.join("; "),
        Resource::Cron(c) => format!("{} as {}", c.schedule, c.user),
        Resource::AptRepo(r) => format!("{} {}", r.uris.join(" "), r.suites.join(" ")),
        Resource::Mount(m) => format!("{} {} ({:?})", m.device, m.fstype, m.state).to_lowercase(),
        _ => String::new(),
    }
}

fn init(dir: &Path) -> u8 {
    match source::init_repo(
        dir,
        &source::template_tree(),
        "Start a tidekeeper fleet from the example template",
    ) {
        Ok(commit) => {
            println!(
                "Created config repo {} (commit {}).\nNext: tidekeeper validate --repo {}",
                dir.display(),
                &commit[..12],
                dir.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
    }
}

/// The demo's own host: this machine, confined to a directory next to the repo.
const DEMO_HOST: &str = "demo-local";

const DEMO_ROLE: &str = r#"description: What the demo applies to this machine, confined to a directory (see hosts/demo-local.yaml).
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

const DEMO_TEMPLATE: &str = r#"{"fleet": {{ fleet.name | tojson }}, "host": {{ host.name | tojson }}, "admin": {{ admin_email | tojson }}}
"#;

fn demo(dir: &Path, no_daemon: bool, listen: std::net::SocketAddr) -> u8 {
    if !dir.join(".git").exists() {
        let code = init(dir);
        if code != EXIT_OK {
            return code;
        }
    } else {
        println!("Using the existing demo repo {}.", dir.display());
    }
    let args = RepoArgs {
        repo: dir.to_path_buf(),
        refname: "HEAD".into(),
    };
    let code = validate(&args, Format::Human);
    if code != EXIT_OK {
        return code;
    }
    // The cloud and existing hosts of the example cannot be reached from
    // here, so the demo adds this machine, confined to a directory, and
    // reconciles it: plan, apply, plan again.
    let abs = match std::fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            return EXIT_USAGE;
        }
    };
    let root = PathBuf::from(format!("{}-root", abs.display()));
    let host_file = dir.join("hosts").join(format!("{DEMO_HOST}.yaml"));
    if !host_file.exists() {
        let written = (|| -> Result<String, String> {
            std::fs::write(
                &host_file,
                format!(
                    "# This machine, in pull mode, confined to a directory for the demo.\n\
                     provider: local\nroot: {}\nroles: [demo-local]\n",
                    root.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            std::fs::write(dir.join("roles/demo-local.yaml"), DEMO_ROLE)
                .map_err(|e| e.to_string())?;
            std::fs::write(dir.join("templates/demo-fleet.json.j2"), DEMO_TEMPLATE)
                .map_err(|e| e.to_string())?;
            let git = git2::Repository::open(dir).map_err(|e| e.to_string())?;
            source::commit_all(
                &git,
                "demo: reconcile this machine, confined to a directory",
            )
            .map_err(|e| e.to_string())
        })();
        if let Err(e) = written {
            eprintln!("error: cannot add the demo host to {}: {e}", dir.display());
            return EXIT_USAGE;
        }
    }
    let hosts = HostArgs {
        hosts: vec![DEMO_HOST.into()],
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
    let code = plan(&args, &hosts, None, PlanFormat::Text, false);
    if code != EXIT_OK {
        return code;
    }
    println!("\n$ tidekeeper apply --host {DEMO_HOST} --yes");
    let code = apply(&args, &hosts, true, false);
    if code != EXIT_OK {
        return code;
    }
    println!("\n$ tidekeeper plan --host {DEMO_HOST}        # again: nothing left to do");
    let code = plan(&args, &hosts, None, PlanFormat::Text, false);
    if code != EXIT_OK {
        return code;
    }
    if no_daemon {
        println!(
            "\nTry it: edit {0}/etc/motd by hand and run `tidekeeper plan --repo {1} --host {DEMO_HOST}` to see the drift;\n\
             `tidekeeper apply --repo {1} --host {DEMO_HOST}` puts it back. Edit roles/demo-local.yaml, commit, and plan again.",
            root.display(),
            dir.display()
        );
        return EXIT_OK;
    }
    let branch = git2::Repository::open(&abs)
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
    run_daemon(
        crate::daemon::Config {
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
            git: Default::default(),
            rollback_after: std::time::Duration::from_secs(120),
            proposals: vec![],
        },
        LogFormat::Human,
    )
}

/// Load the fleet and choose hosts, for plan and apply.
/// Load, and load again with the age identity when one is configured, so
/// secrets are decrypted (in memory only).
fn load_decrypted(tree: &ConfigTree) -> Result<Fleet, u8> {
    let fleet = load(tree, Format::Human)?;
    match crate::secrets::identity(&fleet.settings) {
        Ok(None) => Ok(fleet),
        Ok(Some(id)) => model::load_with_identity(tree, Some(&id)).map_err(|diags| {
            eprint!("{diags}");
            EXIT_INVALID
        }),
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_USAGE)
        }
    }
}

/// The config repo's own `policies/*.rego`, as (path, text).
fn repo_policies(repo: &RepoArgs) -> Vec<(String, String)> {
    ConfigTree::from_git(&repo.repo, &repo.refname)
        .map(|t| t.policies())
        .unwrap_or_default()
}

/// The fleet (secrets decrypted), the chosen hosts, engine options, and
/// the repo's policies — all from one read of the commit.
type Prepared = (Fleet, Vec<String>, engine::Options, Vec<(String, String)>);

fn prepare(repo: &RepoArgs, args: &HostArgs) -> Result<Prepared, u8> {
    let tree = read_tree(repo)?;
    let fleet = load_decrypted(&tree)?;
    let names: Vec<String> = if args.hosts.is_empty() {
        fleet.hosts.iter().map(|h| h.name.clone()).collect()
    } else {
        for n in &args.hosts {
            if fleet.host(n).is_none() {
                let all: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
                eprintln!(
                    "error: no host named {n:?} in fleet {:?}\n  help: hosts are: {}",
                    fleet.name,
                    all.join(", ")
                );
                return Err(EXIT_USAGE);
            }
        }
        args.hosts.clone()
    };
    let opts = engine::Options {
        parallel: args
            .parallel
            .unwrap_or(fleet.settings.parallelism as usize)
            .max(1),
        plan: engine::plan::PlanOptions {
            allow_mass_delete: args.allow_mass_delete,
        },
        ssh_key: args.ssh_key.clone(),
        rollback_deadline: args.rollback_after,
        redactions: fleet.redactions.clone(),
        ..Default::default()
    };
    Ok((fleet, names, opts, tree.policies()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the async runtime")
}

/// Live progress on stderr while hosts are worked on.
fn progress(total: usize, quiet: bool) -> engine::Progress {
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::sync::Arc::new(move |e: engine::Event| {
        if quiet {
            return;
        }
        if let engine::Event::Server { host, message } = &e {
            // Cloud work is not one of the per-host steps counted below.
            eprintln!("{host}: {message}");
            return;
        }
        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let line = match e {
            engine::Event::Planned { host, changes } => {
                format!("{host}: planned, {changes} change{}", plural(changes))
            }
            engine::Event::Failed { host, error } => {
                format!("{host}: failed: {}", error.lines().next().unwrap_or(""))
            }
            engine::Event::Applied { host, steps } => format!("{host}: applied ({steps} steps)"),
            engine::Event::Server { .. } => return,
        };
        eprintln!("[{}/{total}] {line}", n.min(total));
    })
}

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Plan the selected hosts and their servers (the whole fleet when no
/// `--host` is given: only then are servers of removed hosts planned for deletion).
#[allow(clippy::too_many_arguments)]
fn plan_fleet(
    rt: &tokio::runtime::Runtime,
    fleet: Fleet,
    names: Vec<String>,
    args: &HostArgs,
    opts: &std::sync::Arc<engine::Options>,
    clouds: &crate::cloud::Clouds,
    quiet: bool,
    pool: &engine::Pool,
) -> reconcile::FleetPlan {
    let total = names.len();
    rt.block_on(reconcile::plan(
        std::sync::Arc::new(fleet),
        names,
        args.hosts.is_empty(),
        opts.clone(),
        clouds,
        crate::cloud::plan::PlanOptions {
            allow_destroy: args.allow_destroy,
        },
        progress(total, quiet),
        pool,
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PlanFormat {
    Text,
    Json,
    Markdown,
}

/// Plan a proposal (`repo.refname`) under the trusted `base` branch.
fn plan_untrusted(
    rt: &tokio::runtime::Runtime,
    repo: &RepoArgs,
    args: &HostArgs,
    base: &str,
) -> Result<reconcile::ProposalPlan, u8> {
    let base_args = RepoArgs {
        repo: repo.repo.clone(),
        refname: base.to_string(),
    };
    let all_hosts = HostArgs {
        hosts: vec![],
        ..args.clone()
    };
    let (base_fleet, _, opts, base_policies) = prepare(&base_args, &all_hosts)?;
    let tree = read_tree(repo)?;
    // Nothing of a proposal is decrypted.
    let proposal = load(&tree, Format::Human)?;
    for n in &args.hosts {
        if proposal.host(n).is_none() {
            eprintln!("error: no host named {n:?} in the proposal");
            return Err(EXIT_USAGE);
        }
    }
    let names = (!args.hosts.is_empty()).then(|| args.hosts.clone());
    Ok(rt.block_on(reconcile::plan_proposal(
        &base_fleet,
        &base_policies,
        proposal,
        &tree.policies(),
        names,
        opts,
    )))
}

fn plan(
    repo: &RepoArgs,
    args: &HostArgs,
    untrusted_base: Option<&str>,
    format: PlanFormat,
    detailed: bool,
) -> u8 {
    let json = format != PlanFormat::Text;
    let rt = runtime();
    let pool = engine::Pool::new();
    let (fp, verdict, after_merge, opts) = match untrusted_base {
        Some(base) => match plan_untrusted(&rt, repo, args, base) {
            Ok(p) => {
                let opts = engine::Options {
                    redactions: p.plan.fleet.redactions.clone(),
                    ..Default::default()
                };
                (p.plan, p.verdict, p.after_merge, opts)
            }
            Err(c) => return c,
        },
        None => {
            let (fleet, names, opts, policies) = match prepare(repo, args) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let opts = std::sync::Arc::new(opts);
            let clouds = crate::cloud::Clouds::from_env(&fleet);
            let fp = plan_fleet(&rt, fleet, names, args, &opts, &clouds, json, &pool);
            let verdict = fp.gate(&policies).verdict;
            (fp, verdict, vec![], (*opts).clone())
        }
    };
    let results = fp.results();
    if !after_merge.is_empty() && format == PlanFormat::Text {
        println!("Planned as a proposal: these of its settings take effect only after merge:");
        for a in &after_merge {
            println!("  - {a}");
        }
        println!();
    }
    if format == PlanFormat::Markdown {
        let commit = fp.fleet.commit.clone().unwrap_or_default();
        let md = crate::report::markdown(
            &fp.fleet.name,
            &commit,
            fp.cloud.as_ref(),
            &results,
            &verdict,
            &after_merge,
            crate::report::GITHUB_LIMIT,
        );
        print!("{}", opts.redact(&md));
    } else if json {
        let mut doc = reconcile::json(fp.cloud.as_ref(), &results);
        doc["policy"] = serde_json::to_value(&verdict).expect("json");
        if untrusted_base.is_some() {
            doc["after_merge"] = serde_json::to_value(&after_merge).expect("json");
        }
        let text = serde_json::to_string_pretty(&doc).expect("json");
        println!("{}", opts.redact(&text));
    } else {
        print!(
            "{}",
            opts.redact(&reconcile::text(fp.cloud.as_ref(), &results, color()))
        );
        if fp.has_changes() {
            print!("\n{}", opts.redact(&verdict.render()));
        }
    }
    let t = reconcile::totals(fp.cloud.as_ref(), &results);
    rt.block_on(reconcile::finish(fp, pool.clone()));
    if t.errors > 0 || verdict.blocks() {
        EXIT_INVALID
    } else if detailed && t.add + t.change + t.destroy + t.run > 0 {
        2
    } else {
        EXIT_OK
    }
}

fn apply(repo: &RepoArgs, args: &HostArgs, yes: bool, rolling: bool) -> u8 {
    let (fleet, names, mut opts, policies) = match prepare(repo, args) {
        Ok(x) => x,
        Err(c) => return c,
    };
    opts.rolling = rolling;
    let total = names.len();
    let opts = std::sync::Arc::new(opts);
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let rt = runtime();
    let pool = engine::Pool::new();
    let fp = plan_fleet(&rt, fleet, names, args, &opts, &clouds, false, &pool);
    let results = fp.results();
    print!(
        "{}",
        opts.redact(&reconcile::text(fp.cloud.as_ref(), &results, color()))
    );
    let t = reconcile::totals(fp.cloud.as_ref(), &results);
    let reconcile::Gate { verdict, refusals } = fp.gate(&policies);
    if fp.has_changes() {
        print!("\n{}", opts.redact(&verdict.render()));
    }
    if verdict.blocks() {
        println!("The policies deny this plan; nothing was applied.");
        rt.block_on(reconcile::finish(fp, pool.clone()));
        return EXIT_INVALID;
    }
    if !refusals.is_empty() {
        println!("Not applying this plan; nothing was changed:");
        for r in refusals {
            println!("  {r}");
        }
        rt.block_on(reconcile::finish(fp, pool.clone()));
        return EXIT_INVALID;
    }
    if t.add + t.change + t.destroy + t.run == 0 {
        let results = rt.block_on(reconcile::finish(fp, pool.clone()));
        return if results.iter().any(|r| r.error.is_some()) {
            EXIT_INVALID
        } else {
            EXIT_OK
        };
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error: not applying without confirmation; run with --yes to apply non-interactively"
            );
            rt.block_on(reconcile::finish(fp, pool.clone()));
            return EXIT_USAGE;
        }
        print!("\nApply these changes? Only 'yes' will be accepted: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "yes" {
            println!("Apply cancelled.");
            rt.block_on(reconcile::finish(fp, pool.clone()));
            return EXIT_OK;
        }
    }
    let done = rt.block_on(reconcile::apply(
        fp,
        &pool,
        opts.clone(),
        &clouds,
        progress(total, false),
    ));
    println!();
    print!("{}", opts.redact(&reconcile::cloud_summary(&done.cloud)));
    println!(
        "{}",
        opts.redact(engine::render::apply_summary(&done.hosts).trim_end())
    );
    for r in &done.hosts {
        if let Some(line) = &r.generated_host_key {
            println!(
                "{}: host key generated by tidekeeper and verified; to pin it, add to known_hosts:\n  {line}",
                r.host
            );
        }
    }
    let failed = done.hosts.iter().filter(|r| r.error.is_some()).count()
        + done.cloud.iter().filter(|o| o.error.is_some()).count();
    if failed > 0 {
        println!(
            "{failed} host{} or server{} failed; the others were applied.",
            plural(failed),
            plural(failed)
        );
        EXIT_INVALID
    } else {
        println!("Apply complete.");
        EXIT_OK
    }
}

fn run_daemon(cfg: crate::daemon::Config, format: LogFormat) -> u8 {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    match runtime().block_on(crate::daemon::run(cfg)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
    }
}

/// POST to a running daemon (plain HTTP/1.1 on loopback); `done` is said on
/// success, with `{addr}` filled in.
fn post_daemon(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
    done: &str,
) -> u8 {
    use std::io::Read;
    if token.is_some_and(|t| t.contains(['\r', '\n'])) {
        eprintln!("error: TIDEKEEPER_API_TOKEN must be one line");
        return EXIT_USAGE;
    }
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
        s.write_all(format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(resp) if resp.starts_with("HTTP/1.1 202") => {
            println!("{}", done.replace("{addr}", &addr.to_string()));
            EXIT_OK
        }
        Ok(resp) => {
            let said = resp
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.trim())
                .unwrap_or("");
            eprintln!(
                "error: the daemon at {addr} answered: {}{}",
                resp.lines().next().unwrap_or(""),
                if said.is_empty() {
                    String::new()
                } else {
                    format!("\n  {said}")
                }
            );
            EXIT_INVALID
        }
        Err(e) => {
            eprintln!("error: cannot reach the daemon at {addr}: {e}");
            EXIT_USAGE
        }
    }
}

fn secrets_cmd(cmd: SecretsCommand) -> u8 {
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
        return EXIT_USAGE;
    }
    let mut recipients = keys.recipients.clone();
    if recipients.is_empty()
        && let Some(id) = &keys.identity
    {
        recipients = crate::secrets::recipients_of(id);
    }
    if recipients.is_empty() {
        eprintln!("error: no recipients: pass --recipient age1… or set TIDEKEEPER_AGE_IDENTITY");
        return EXIT_USAGE;
    }
    let plaintext = if edit {
        let Some(id) = &keys.identity else {
            eprintln!("error: editing needs the identity to decrypt: set TIDEKEEPER_AGE_IDENTITY");
            return EXIT_USAGE;
        };
        let path = keys.repo.join("secrets").join(format!("{name}.age"));
        let current = match std::fs::read(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_USAGE;
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
            return EXIT_USAGE;
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
                return EXIT_USAGE;
            }
        }
    } else {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("error: reading the secret from stdin: {e}");
            return EXIT_USAGE;
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
            EXIT_USAGE
        }
    }
}

fn schedule_cmd(cmd: ScheduleCommand) -> u8 {
    match cmd {
        ScheduleCommand::List { repo, next } => {
            let tree = match read_tree(&repo) {
                Ok(t) => t,
                Err(c) => return c,
            };
            let fleet = match load(&tree, Format::Human) {
                Ok(f) => f,
                Err(c) => return c,
            };
            if fleet.jobs.is_empty() {
                println!("No maintenance jobs (schedules.yaml).");
                return EXIT_OK;
            }
            let now = chrono::Utc::now();
            // Prices for what power schedules save (only when the provider answers).
            let power = fleet
                .jobs
                .iter()
                .any(|j| matches!(j.kind, crate::model::desired::JobKind::Power { .. }));
            let observed = power.then(|| {
                let clouds = crate::cloud::Clouds::from_env(&fleet);
                runtime().block_on(crate::cloud::observe(&clouds)).ok()
            });
            for job in &fleet.jobs {
                println!(
                    "{} ({}, cron \"{}\" {}){}",
                    job.name,
                    job.kind.name(),
                    job.cron,
                    job.timezone,
                    job.window
                        .as_ref()
                        .map(|w| format!(", window {w}"))
                        .unwrap_or_default()
                );
                println!("  hosts: {}", job.hosts.join(", "));
                if matches!(job.kind, crate::model::desired::JobKind::Power { .. }) {
                    print!(
                        "{}",
                        crate::maintenance::power_saving(
                            &fleet,
                            job,
                            now,
                            observed.as_ref().and_then(|o| o.as_ref())
                        )
                    );
                }
                let tz = crate::schedule::parse_tz(&job.timezone).unwrap_or(chrono_tz::UTC);
                let mut t = now;
                for _ in 0..next {
                    match crate::maintenance::plan::next(job, t) {
                        Some(n) => {
                            println!(
                                "  next: {}",
                                n.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z")
                            );
                            t = n;
                        }
                        None => break,
                    }
                }
            }
            EXIT_OK
        }
        ScheduleCommand::Run {
            job,
            repo,
            hosts,
            json,
            ignore_window,
        } => {
            let only = hosts.hosts.clone();
            let args = HostArgs {
                hosts: vec![],
                ..hosts
            };
            let (fleet, _, opts, _) = match prepare(&repo, &args) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let Some(j) = fleet.jobs.iter().find(|j| j.name == job) else {
                let names: Vec<&str> = fleet.jobs.iter().map(|j| j.name.as_str()).collect();
                eprintln!(
                    "error: no job named {job:?}\n  help: jobs are: {}",
                    names.join(", ")
                );
                return EXIT_USAGE;
            };
            let clouds = crate::cloud::Clouds::from_env(&fleet);
            let mut j = j.clone();
            if ignore_window {
                j.window = None;
            }
            let run = runtime().block_on(crate::maintenance::run::run_job(
                &fleet, &j, &only, &opts, &clouds,
            ));
            if json {
                println!("{}", serde_json::to_string_pretty(&run).expect("json"));
            } else {
                print!("{}", crate::maintenance::render(&run));
            }
            if run.ok && run.not_started.is_none() {
                EXIT_OK
            } else {
                EXIT_INVALID
            }
        }
    }
}

fn policy_test(repo: &RepoArgs) -> u8 {
    let results = crate::policy::run_tests(&repo_policies(repo));
    if results.is_empty() {
        println!("No policy tests (test_* rules in policies/*.rego).");
        return EXIT_OK;
    }
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(()) => println!("PASS {name}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 { EXIT_INVALID } else { EXIT_OK }
}
