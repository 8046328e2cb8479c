//! The command line as clap reads it: every subcommand and its options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCompleter;

use super::complete;

#[derive(Parser, Debug)]
#[command(
    name = "tidekeeper",
    version,
    about = "GitOps reconciler for fleets of plain Linux servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log lines on stderr: -v info, -vv debug, -vvv trace (TIDEKEEPER_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log lines as text, or as JSON objects (one per line).
    #[arg(long, value_enum, default_value = "human", global = true)]
    pub log_format: LogFormat,
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

/// `-o`: how a command prints its result, the same word on every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    /// A versioned document (`format_version`, the commit) on stdout;
    /// errors too, as JSON objects.
    Json,
    /// As the pull-request comment the daemon posts.
    Markdown,
}

impl Output {
    /// The name `-o` takes.
    pub fn name(self) -> &'static str {
        match self {
            Output::Text => "text",
            Output::Json => "json",
            Output::Markdown => "markdown",
        }
    }
}

/// `-o text|json|markdown`; a file name is pointed to `--out`, which
/// `plan -o FILE` once was.
fn parse_output(s: &str) -> Result<Output, String> {
    match s {
        "text" => Ok(Output::Text),
        "json" => Ok(Output::Json),
        "markdown" | "md" => Ok(Output::Markdown),
        _ => Err(format!(
            "write text, json or markdown (to save a plan to a file: --out {s})"
        )),
    }
}

/// How `show` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowFormat {
    Text,
    Markdown,
    Json,
}

/// How `log` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutput {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// Only these hosts (repeatable): names, globs such as 'web-*', or the
    /// name of a `count: N` group; default: every host in the fleet.
    #[arg(long = "host", value_name = "NAME|GLOB", add = ArgValueCompleter::new(complete::hosts))]
    pub hosts: Vec<String>,
    /// Only hosts with these labels (`labels:` in hosts/*.yaml; all must
    /// match; `group=NAME` for a group's hosts): -l env=prod,tier=web.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE[,…]", add = ArgValueCompleter::new(complete::labels))]
    pub labels: Vec<String>,
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

impl HostArgs {
    /// No `--host` and no `-l`: the whole fleet.
    pub fn selects_all(&self) -> bool {
        self.hosts.is_empty() && self.labels.is_empty()
    }
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
    // The same words as durations in the config files.
    crate::model::check::duration(s)
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
        #[command(flatten)]
        now: NowArg,
        /// How to print: text, or json (`format_version`, the commit, and
        /// each job with its hosts and next runs in UTC).
        #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
        output: Option<Output>,
    },
    /// Run a job now (its window is still respected unless --ignore-window).
    #[command(
        mut_arg("rollback_after", |a| a.hide(true)),
        mut_arg("allow_mass_delete", |a| a.hide(true)),
        mut_arg("allow_destroy", |a| a.hide(true))
    )]
    Run {
        /// The job's `name:` in schedules.yaml (`schedule list` lists them).
        #[arg(add = ArgValueCompleter::new(complete::jobs))]
        job: String,
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        hosts: HostArgs,
        /// How to print the run: text or json (with `format_version`).
        #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
        output: Option<Output>,
        /// The same as `-o json`.
        #[arg(long, hide = true, conflicts_with = "output")]
        json: bool,
        /// Run even outside the job's maintenance window (by hand, on purpose).
        #[arg(long)]
        ignore_window: bool,
        #[command(flatten)]
        now: NowArg,
    },
}

/// `tidekeeper run`'s arguments; the daemon's [`crate::daemon::Config`] is
/// made from them.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The config repo to follow: a path or a URL git can fetch (file://).
    #[arg(long, env = "TIDEKEEPER_REPO")]
    pub repo: String,
    /// The branch to follow: its commits are applied, its pull requests planned.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Where the daemon keeps its mirror of the repo.
    #[arg(
        long,
        default_value = "/var/lib/tidekeeper-daemon",
        env = "TIDEKEEPER_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// Address of the HTTP server (status page, metrics, webhook).
    #[arg(long, default_value = "127.0.0.1:8420")]
    pub listen: std::net::SocketAddr,
    /// Poll interval (e.g. 60s, 5m); default: the fleet's `intervals.poll`.
    #[arg(long, value_parser = parse_duration)]
    pub poll: Option<std::time::Duration>,
    /// Drift check interval; default: the fleet's `intervals.drift`.
    #[arg(long, value_parser = parse_duration)]
    pub drift: Option<std::time::Duration>,
    /// Shared secret for webhook signatures (GitHub or Gitea HMAC-SHA256).
    #[arg(long, env = "TIDEKEEPER_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Token that authorizes actions over HTTP (`POST /retry`, sent as
    /// `Authorization: Bearer …`); without it (and a webhook secret) they are refused.
    #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Private key for SSH (default: the fleet's `defaults.ssh.key`, else ssh-agent).
    #[arg(long, env = "TIDEKEEPER_SSH_KEY")]
    pub ssh_key: Option<String>,
    /// Do not watch a local repo for commits (polling and webhooks still work).
    #[arg(long)]
    pub no_watch: bool,
    /// Only these hosts (repeatable; names or globs such as 'web-*'), e.g. a
    /// server reconciling itself in pull mode. Matching no host is an error.
    #[arg(long = "host", value_name = "NAME|GLOB", add = ArgValueCompleter::new(complete::hosts))]
    pub hosts: Vec<String>,
    /// Only hosts with these labels (all must match): -l env=prod,tier=web.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE[,…]", add = ArgValueCompleter::new(complete::labels))]
    pub labels: Vec<String>,
    /// Private key for fetching an ssh:// config repo (default: --ssh-key, else ssh-agent).
    #[arg(long, env = "TIDEKEEPER_GIT_SSH_KEY")]
    pub git_ssh_key: Option<PathBuf>,
    /// known_hosts file pinning the git server's host key (required for ssh://).
    #[arg(
        long,
        env = "TIDEKEEPER_GIT_KNOWN_HOSTS",
        default_value = "/etc/tidekeeper/git_known_hosts"
    )]
    pub git_known_hosts: PathBuf,
    /// Token for an https:// config repo.
    #[arg(long, env = "TIDEKEEPER_GIT_TOKEN", hide_env_values = true)]
    pub git_token: Option<String>,
    /// A host rolls back a risky change unless access is proven within this time.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub rollback_after: std::time::Duration,
    /// Refs of proposed changes to plan read-only (repeatable; globs).
    #[arg(long = "proposals", default_value = "refs/pull/*/head")]
    pub proposals: Vec<String>,
}

/// The time a schedule is read at.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NowArg {
    /// Read the schedule as if it were this time (RFC 3339, e.g.
    /// 2027-01-01T00:30:00Z): windows, power periods and next runs
    /// (default: the machine's clock).
    #[arg(long, value_name = "TIME", value_parser = parse_now)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

impl NowArg {
    pub fn clock(&self) -> crate::clock::Clock {
        match self.now {
            Some(t) => crate::clock::Clock::starting_at(t),
            None => crate::clock::Clock::system(),
        }
    }
}

/// A daemon's address as people write it: `localhost:8420`, `ops-1`,
/// `http://10.0.0.5:8420/`, `[::1]:8420`; resolved here.
fn parse_daemon(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    let host_port = rest.split('/').next().unwrap_or("");
    if host_port.is_empty() {
        return Err("no host; write HOST:PORT, e.g. localhost:8420".into());
    }
    let with_port = if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:8420")
    } else {
        host_port.to_string()
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port:?} resolves to no address"))
}

fn parse_now(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}; write a time like 2027-01-01T00:30:00Z"))
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportProvider {
    Hetzner,
    Lightsail,
    Ec2,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup job (schedules.yaml).
    #[arg(add = ArgValueCompleter::new(complete::jobs))]
    pub job: String,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The one host to restore onto: its name (hosts/NAME.yaml), or a
    /// glob or `-l` selector that matches exactly one host.
    #[arg(long = "host", value_name = "NAME", add = ArgValueCompleter::new(complete::hosts))]
    pub host: Option<String>,
    /// Choose the host by its labels instead (must match exactly one): -l env=prod,role=db.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE[,…]", add = ArgValueCompleter::new(complete::labels))]
    pub labels: Vec<String>,
    /// Private key for SSH (default: the fleet's `defaults.ssh.key`, else ssh-agent).
    #[arg(long, env = "TIDEKEEPER_SSH_KEY")]
    pub ssh_key: Option<String>,
    /// `latest` (the host's newest snapshot) or a snapshot id.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Only this path of the snapshot (files jobs).
    #[arg(long)]
    pub path: Option<String>,
    /// Restore into this directory instead of in place (files jobs).
    #[arg(long)]
    pub target: Option<String>,
    /// Load a pg_dump into this database instead of the job's own.
    #[arg(long)]
    pub database: Option<String>,
    /// Drop the database first (pg_dump jobs).
    #[arg(long)]
    pub replace: bool,
    /// Restore without asking.
    #[arg(long)]
    pub yes: bool,
    /// How to print: text, or json (one document at the end with
    /// `format_version`, the commit, the host and the snapshot restored;
    /// it does not ask, so it needs --yes).
    #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
    pub output: Option<Output>,
}

#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// Send a test message to SINK now, with the credentials the daemon would use.
    Test {
        /// The sink's `name:` under `notify.sinks` in tidekeeper.yaml.
        #[arg(add = ArgValueCompleter::new(complete::sinks))]
        sink: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Encrypt standard input into secrets/NAME.age (then commit it).
    Encrypt {
        /// The secret's name: written to secrets/NAME.age.
        name: String,
        #[command(flatten)]
        keys: SecretKeys,
    },
    /// Decrypt secrets/NAME.age into $EDITOR and encrypt the result again,
    /// to the same number of recipients or more (never fewer).
    Edit {
        /// The secret's name: secrets/NAME.age.
        name: String,
        #[command(flatten)]
        keys: SecretKeys,
    },
    /// Encrypt every secrets/*.age again to the recipients in
    /// secrets/.recipients (after adding or removing a person).
    Rekey {
        #[command(flatten)]
        keys: SecretKeys,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SecretKeys {
    /// The config repo's work tree.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// age public keys to encrypt to (repeatable); default: the keys in
    /// secrets/.recipients, else the identity's own.
    #[arg(long = "recipient", value_name = "AGE1…")]
    pub recipients: Vec<String>,
    /// The age identity (its text), as the daemon gets it.
    #[arg(long, env = "TIDEKEEPER_AGE_IDENTITY", hide_env_values = true)]
    pub identity: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The daemon's worker that plans one proposal (a job on stdin, its
    /// plan as JSON on stdout), under the limits the daemon set.
    #[command(name = "proposal-worker", hide = true)]
    ProposalWorker,
    /// Check the config repo at a commit; report every problem with file:line:column.
    Validate {
        #[command(flatten)]
        repo: RepoArgs,
        /// Check the files on disk (uncommitted changes included) instead of a commit.
        #[arg(long, conflicts_with = "refname")]
        worktree: bool,
        /// How to print: text (errors with source snippets on stderr) or
        /// json (the result, or every error as an object, on stdout).
        #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
        output: Option<Output>,
        /// Also `short`: one `file:line:column: error[code]: message` line per problem.
        #[arg(
            long,
            value_enum,
            default_value = "human",
            hide = true,
            conflicts_with = "output"
        )]
        format: Format,
    },
    /// Print a host's fully resolved desired state, or a saved plan (`plan --out FILE`).
    Show {
        /// Host name (as in `tidekeeper validate`'s list), or the path of a
        /// saved plan (an existing file).
        #[arg(add = ArgValueCompleter::new(complete::hosts_or_files))]
        host: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// How to print: text, json, or markdown (a saved plan as the
        /// pull-request comment the daemon posts).
        #[arg(short = 'o', long = "output", value_name = "text|json|markdown", value_parser = parse_output)]
        output: Option<Output>,
        /// The same as `-o json`.
        #[arg(long, hide = true, conflicts_with_all = ["format", "output"])]
        json: bool,
        /// The same as `-o`.
        #[arg(long, value_enum, hide = true, conflicts_with = "output")]
        format: Option<ShowFormat>,
        /// Connect to the host and print its facts as templates read them
        /// (`facts.arch`, `facts.cpus`, …).
        #[arg(long)]
        facts: bool,
        /// Private key for SSH, with --facts (default: the fleet's `defaults.ssh.key`, else ssh-agent).
        #[arg(long, env = "TIDEKEEPER_SSH_KEY")]
        ssh_key: Option<String>,
    },
    /// Show what would change on the hosts (read-only).
    #[command(mut_arg("rollback_after", |a| a.hide(true)))]
    Plan {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        hosts: HostArgs,
        /// How to print: text, json (with `format_version` and the commit),
        /// or markdown (the pull-request comment the daemon posts).
        #[arg(short = 'o', long = "output", value_name = "text|json|markdown", value_parser = parse_output)]
        output: Option<Output>,
        /// The same as `-o json`.
        #[arg(long, hide = true, conflicts_with_all = ["markdown", "output"])]
        json: bool,
        /// The same as `-o markdown`.
        #[arg(long, hide = true, conflicts_with = "output")]
        markdown: bool,
        /// Exit 0 when nothing would change, 2 when something would, 1 on errors.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Look only at the managed files whose size, inode, mtime or ctime
        /// changed since they were last seen as the config wants them: fast
        /// on hosts with many files (the daemon's drift checks do this
        /// between full checks). Keeps the host's stat cache up to date.
        #[arg(long, conflicts_with = "untrusted")]
        changed_files_only: bool,
        /// Plan `--ref` as a proposal from someone not trusted (a pull request):
        /// with `--base`'s settings, only reading what the base manages, running
        /// nothing of the proposal and decrypting no secret. For CI jobs that plan PRs.
        #[arg(long)]
        untrusted: bool,
        /// The trusted branch a proposal is planned against (with --untrusted).
        #[arg(long, default_value = "main", requires = "untrusted")]
        base: String,
        /// Also save the plan to FILE, for `tidekeeper apply FILE` (which
        /// applies exactly this plan, or refuses when what it saw moved) and
        /// `tidekeeper show FILE`.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["untrusted", "changed_files_only"])]
        out: Option<PathBuf>,
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
        /// A plan saved by `plan --out FILE`: planned again and applied
        /// without asking when it is still what a fresh plan says, refused
        /// (naming what moved) when it is not.
        #[arg(value_name = "FILE")]
        plan_file: Option<PathBuf>,
        /// How to print: text, or json (one document at the end with
        /// `format_version`, the commit, the plan and what each host and
        /// server did; it does not ask, so it needs --yes or FILE).
        #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
        output: Option<Output>,
    },
    /// Run the reconciler: poll (and take webhooks), apply new commits, watch for drift, report back.
    Run(RunArgs),
    /// Ask a running daemon to retry its quarantined commit.
    Retry {
        /// The daemon: HOST:PORT, HOST, or http://HOST:PORT/ (port 8420 if none).
        #[arg(long, default_value = "127.0.0.1:8420", value_parser = parse_daemon)]
        daemon: std::net::SocketAddr,
        /// The daemon's API token.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
    },
    /// Stop a running daemon's applies and jobs now (planning and reporting go on).
    Suspend {
        /// The daemon: HOST:PORT, HOST, or http://HOST:PORT/ (port 8420 if none).
        #[arg(long, default_value = "127.0.0.1:8420", value_parser = parse_daemon)]
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
    /// Ask a running daemon to apply a commit it holds for want of a
    /// reviewed plan (`apply.require_reviewed_plan`), once; who is recorded.
    /// With `--now`, also a commit it holds outside the apply windows.
    Release {
        /// The held commit (at least 7 hex digits).
        commit: String,
        /// Who releases it, for the note and the history.
        #[arg(long)]
        by: String,
        /// Apply it now even outside the apply windows (`apply.apply_windows`).
        #[arg(long)]
        now: bool,
        /// The daemon: HOST:PORT, HOST, or http://HOST:PORT/ (port 8420 if none).
        #[arg(long, default_value = "127.0.0.1:8420", value_parser = parse_daemon)]
        daemon: std::net::SocketAddr,
        /// The daemon's API token.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
    },
    /// The audit trail: the branch's commits, newest first, with what the
    /// daemon did with each (verdict, when, who merged, approved or
    /// released it, the reviewed plan), read from the notes it pushed.
    Log {
        /// Which branch to walk: `--ref main` for the branch the daemon follows.
        #[command(flatten)]
        repo: RepoArgs,
        /// How many commits (first parents only), newest first.
        #[arg(short = 'n', long = "max-count", default_value_t = 20)]
        count: usize,
        /// Only commits made at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = parse_now)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// How to print: a table (text) or a versioned JSON document (json).
        #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
        output: Option<Output>,
        /// The same as `-o json`.
        #[arg(long, hide = true, conflicts_with_all = ["format", "output"])]
        json: bool,
        /// The same as `-o`.
        #[arg(long, value_enum, hide = true, conflicts_with = "output")]
        format: Option<LogOutput>,
    },
    /// What a running daemon reports: the branch's head and applied commit,
    /// what is held or quarantined, and each host (like `flux get`).
    Status {
        /// The daemon: HOST:PORT, HOST, or http://HOST:PORT/ (port 8420 if none).
        #[arg(long, default_value = "127.0.0.1:8420", value_parser = parse_daemon)]
        daemon: std::net::SocketAddr,
        /// Print the daemon's status JSON instead of a summary (the same as `--format json`).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// How to print: a summary (text) or the daemon's status JSON.
        #[arg(long, value_enum)]
        format: Option<LogOutput>,
    },
    /// Ask a running daemon to fetch and apply the branch now, and check
    /// for drift (like `flux reconcile`); with --wait, until it is done.
    Reconcile {
        /// The daemon: HOST:PORT, HOST, or http://HOST:PORT/ (port 8420 if none).
        #[arg(long, default_value = "127.0.0.1:8420", value_parser = parse_daemon)]
        daemon: std::net::SocketAddr,
        /// The daemon's API token.
        #[arg(long, env = "TIDEKEEPER_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// Wait until the branch's head is applied (exit 0), or held,
        /// quarantined or invalid (exit 1, saying why).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 5m).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Undo `tidekeeper suspend`.
    Resume {
        /// The daemon: HOST:PORT, HOST, or http://HOST:PORT/ (port 8420 if none).
        #[arg(long, default_value = "127.0.0.1:8420", value_parser = parse_daemon)]
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
    /// Adopt a server made elsewhere: label it as this fleet's (renamed to
    /// HOST where the provider can) and write hosts/HOST.yaml for review.
    Import {
        /// Where the server runs.
        provider: ImportProvider,
        /// The server's name at the provider.
        server: String,
        /// The host name it gets in the fleet.
        #[arg(long = "as", value_name = "HOST")]
        host: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// How to print: text, or json (`format_version`, the host file
        /// written, the networks to declare).
        #[arg(short = 'o', long = "output", value_name = "text|json", value_parser = parse_output)]
        output: Option<Output>,
    },
    /// Restore a backup job's snapshot onto its host (files, or a pg_dump
    /// database), after a preview of what it holds.
    Restore(RestoreArgs),
    /// Shell completions on stdout: `tidekeeper completions bash > /etc/bash_completion.d/tidekeeper`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// JSON Schema of a config file for editors (yaml-language-server), on
    /// stdout; or all of them into --out-dir (a repo's .tidekeeper/schema).
    Schema {
        /// Which config file's schema to print.
        #[arg(value_enum, default_value = "fleet")]
        file: crate::model::schema::ConfigFile,
        /// Write every config file's schema into this directory instead
        /// (created if missing), e.g. .tidekeeper/schema.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// The manual page (roff) on stdout, or one page per command into --out-dir.
    Man {
        /// Write tidekeeper.1 and a page per command, nested ones too
        /// (tidekeeper-plan.1, tidekeeper-secrets-rekey.1), into this
        /// directory (created if missing), e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Notifications: send a test message to a sink of `notify:`.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
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

#[cfg(test)]
mod tests {
    /// Every argument of every command, nested ones too, says what it is.
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = vec![];
        walk(
            &<super::Cli as clap::CommandFactory>::command(),
            "tidekeeper",
            &mut missing,
        );
        assert!(missing.is_empty(), "no help for: {missing:#?}");
    }

    /// What only an apply does is not offered where nothing is applied.
    #[test]
    fn plan_restore_and_schedule_run_offer_no_apply_only_flags() {
        let cli = <super::Cli as clap::CommandFactory>::command();
        let shown = |path: &[&str]| -> Vec<String> {
            let mut c = &cli;
            for p in path {
                c = c.find_subcommand(p).unwrap();
            }
            c.get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long().map(String::from))
                .collect()
        };
        for (path, not) in [
            (&["plan"][..], &["rollback-after"][..]),
            (
                &["restore"][..],
                &[
                    "rollback-after",
                    "allow-destroy",
                    "allow-mass-delete",
                    "parallel",
                ][..],
            ),
            (
                &["schedule", "run"][..],
                &["rollback-after", "allow-destroy", "allow-mass-delete"][..],
            ),
        ] {
            let shown = shown(path);
            for flag in not {
                assert!(!shown.iter().any(|s| s == flag), "{path:?} shows --{flag}");
            }
        }
        assert!(shown(&["apply"]).iter().any(|s| s == "rollback-after"));
    }

    /// Regression: `--rollback-after 1h30m` was refused while the same
    /// words were a valid duration in the config files.
    #[test]
    fn the_command_line_reads_durations_as_the_config_does() {
        use std::time::Duration;
        assert_eq!(
            super::parse_duration("1h30m"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            super::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert!(super::parse_duration("60").is_err(), "a unit is needed");
    }
}
