//! The `tidekeeper` command: argument handling and glue, no logic of its own.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod apply;
mod args;
mod daemon;
mod import;
mod init;
mod notify;
mod plan;
mod policy;
mod restore;
mod schedule;
mod secrets;
mod show;
mod validate;

use apply::apply;
pub use args::*;
use daemon::{post_daemon, run_daemon};
use import::import_cmd;
use init::{demo, init};
use plan::{PlanFormat, plan};
use policy::policy_test;
use restore::restore_cmd;
use schedule::schedule_cmd;
use secrets::secrets_cmd;
use show::show;
use validate::{at_commit, validate};

use crate::engine;
use crate::model::{self, Fleet, desired::Resource};
use crate::reconcile;
use crate::source::{self, ConfigTree};

/// Exit codes scripts can rely on, as Terraform's: 0 ok; 1 an invalid
/// config or any other error (a missing repo or ref, an unknown host, an
/// unreachable service); 2 only for a command line that cannot be parsed,
/// and for `plan --detailed-exitcode`, "there are changes".
pub const EXIT_OK: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_ERROR: u8 = 1;

/// `-q`: only errors on stderr, progress lines included.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn run(cli: Cli) -> ExitCode {
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    if let Command::ProposalWorker = cli.command {
        // No logging: its stderr is read only to name how it died.
        return crate::daemon::worker::main();
    }
    logging(&cli);
    let code = match cli.command {
        Command::ProposalWorker => unreachable!("handled above"),
        Command::Validate {
            repo,
            worktree,
            format,
        } => validate(&repo, worktree, format),
        Command::Show { host, repo, json } => show(&repo, &host, json),
        Command::Plan {
            repo,
            hosts,
            json,
            markdown,
            detailed_exitcode,
            changed_files_only,
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
            changed_files_only,
        ),
        Command::Apply {
            repo,
            hosts,
            yes,
            rolling,
        } => apply(&repo, &hosts, yes, rolling),
        Command::Run(args) => run_daemon(args.into()),
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
        Command::Restore(r) => restore_cmd(r),
        Command::Import {
            provider,
            server,
            host,
            repo,
        } => import_cmd(provider, &server, &host, &repo),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tidekeeper", &mut std::io::stdout());
            EXIT_OK
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
        Command::Schema { file, out_dir } => schema(file, out_dir.as_deref()),
        Command::Notify {
            command: NotifyCommand::Test { sink, repo },
        } => notify::test(&repo, &sink),
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

/// Log lines on stderr for every command: warnings and errors by default
/// (the daemon and the demo: info), more with -v, fewer with -q; colours
/// only on a terminal (journald and files get plain text).
fn logging(cli: &Cli) {
    let chatty = matches!(cli.command, Command::Run(_) | Command::Demo { .. });
    let level = match (cli.quiet, cli.verbose, chatty) {
        (true, _, _) => "error",
        (_, 0, false) => "warn",
        (_, 0, true) | (_, 1, _) => "info",
        (_, 2, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// `tidekeeper man`: the page for tidekeeper on stdout, or into `dir` the
/// page for tidekeeper and one for each command (tidekeeper-plan.1, …).
fn schema(file: crate::model::schema::ConfigFile, dir: Option<&Path>) -> u8 {
    use crate::model::schema::ConfigFile;
    let text = |f: ConfigFile| serde_json::to_string_pretty(&f.schema()).expect("json") + "\n";
    let Some(dir) = dir else {
        print!("{}", text(file));
        return EXIT_OK;
    };
    let written = std::fs::create_dir_all(dir).and_then(|_| {
        ConfigFile::ALL
            .iter()
            .try_for_each(|f| std::fs::write(dir.join(f.file_name()), text(*f)))
    });
    match written {
        Ok(()) => {
            println!(
                "Wrote {} schemas to {}.",
                ConfigFile::ALL.len(),
                dir.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: writing into {}: {e}", dir.display());
            EXIT_ERROR
        }
    }
}

fn man(dir: Option<&Path>) -> u8 {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            Ok(()) => EXIT_OK,
            // `tidekeeper man | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_ERROR
            }
        };
    };
    /// A page for `c` and one for each of its subcommands, nested ones too
    /// (`tidekeeper-secrets-rekey.1`); hidden commands get none.
    fn pages(dir: &Path, name: &str, c: clap::Command) -> std::io::Result<usize> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.clone().name(name.to_string())).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        let mut n = 1;
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            n += pages(dir, &format!("{name}-{}", s.get_name()), s.clone())?;
        }
        Ok(n)
    }
    let written = std::fs::create_dir_all(dir).and_then(|_| pages(dir, "tidekeeper", cmd));
    match written {
        Ok(n) => {
            println!("Wrote {n} manual pages to {}.", dir.display());
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the manual pages to {}: {e}",
                dir.display()
            );
            EXIT_ERROR
        }
    }
}

fn read_tree(repo: &RepoArgs) -> Result<ConfigTree, u8> {
    let fail = |e: source::SourceError| {
        eprintln!("error: {e}");
        EXIT_ERROR
    };
    let path = source::discover(&repo.repo).map_err(fail)?;
    ConfigTree::from_git(&path, &repo.refname).map_err(fail)
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

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
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
            Err(EXIT_ERROR)
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
                return Err(EXIT_ERROR);
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

/// This executable: the daemon starts its proposal workers from it.
fn this_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tidekeeper"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the async runtime")
}

/// Live progress on stderr while hosts are worked on: a line per host
/// finished (and, off a terminal, per host started); on a terminal also a
/// spinner naming the hosts in flight, cleared when the last is done.
fn progress(total: usize, quiet: bool) -> engine::Progress {
    if quiet || QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return std::sync::Arc::new(|_| {});
    }
    let live = std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        && total > 0;
    let bar = live.then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                .expect("template"),
        );
        b.set_message("starting");
        b.enable_steady_tick(std::time::Duration::from_millis(100));
        b
    });
    let state = std::sync::Mutex::new((0usize, std::collections::BTreeMap::<String, &str>::new()));
    std::sync::Arc::new(move |e: engine::Event| {
        let say = |line: String| match &bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        };
        let mut st = state.lock().unwrap();
        let secs = |d: std::time::Duration| format!("{:.1}s", d.as_secs_f64());
        let line = match e {
            // Cloud work is not one of the per-host steps counted below.
            engine::Event::Server { host, message } => return say(format!("{host}: {message}")),
            engine::Event::Started { host, what } => {
                if bar.is_none() {
                    // A line when a host starts, so a slow one shows which it is.
                    eprintln!("{host}: {what}…");
                }
                st.1.insert(host, what);
                None
            }
            engine::Event::Planned {
                host,
                changes,
                elapsed,
            } => Some((
                host.clone(),
                format!(
                    "{host}: planned, {} ({})",
                    changes.to_do_short(),
                    secs(elapsed)
                ),
            )),
            engine::Event::Failed {
                host,
                error,
                elapsed,
            } => Some((
                host.clone(),
                format!(
                    "{host}: failed after {}: {}",
                    secs(elapsed),
                    error.lines().next().unwrap_or("")
                ),
            )),
            engine::Event::Applied {
                host,
                changes,
                elapsed,
            } => Some((
                host.clone(),
                format!(
                    "{host}: applied, {} ({})",
                    changes.done_short(),
                    secs(elapsed)
                ),
            )),
        };
        if let Some((host, line)) = line {
            st.0 += 1;
            st.1.remove(&host);
            say(format!("[{}/{total}] {line}", st.0.min(total)));
        }
        if let Some(b) = &bar {
            b.set_position(st.0.min(total) as u64);
            if st.0 >= total {
                b.finish_and_clear();
                return;
            }
            let mut names: Vec<&str> = st.1.keys().map(String::as_str).take(3).collect();
            let more = st.1.len().saturating_sub(names.len());
            let what = st.1.values().next().copied().unwrap_or("working");
            let more = if more > 0 {
                format!(" +{more}")
            } else {
                String::new()
            };
            if names.is_empty() {
                names.push("…");
            }
            b.set_message(format!("{what} {}{more}", names.join(", ")));
        }
    })
}

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
