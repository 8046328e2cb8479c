//! The `tidekeeper` command: arguments handed to the stages that do the
//! work, and what they return shown on the terminal; no logic of its own.
//! Every command returns a [`CliResult`]; [`run`] prints a command's error
//! and maps its end to the exit code, in one place.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod apply;
mod args;
mod complete;
mod daemon;
mod error;
mod import;
mod init;
mod log;
mod notify;
mod pipe;
mod plan;
mod policy;
mod release;
mod restore;
mod saved;
mod schedule;
mod secrets;
mod show;
mod status;
mod validate;

use apply::{apply, apply_saved};
pub use args::*;
use daemon::{post_daemon, run_daemon};
use error::{CliError, Outcome};
use import::import_cmd;
use init::{demo, init};
pub use pipe::end_quietly_when_output_is_closed;
use plan::{PlanFormat, plan};
use policy::policy_test;
use restore::restore_cmd;
use schedule::schedule_cmd;
use secrets::secrets_cmd;
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

/// What a command returns: how it ended, or why it could not.
type CliResult = Result<Outcome, CliError>;

/// `-q`: only errors on stderr, progress lines included.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `-o json`: the command's errors go to stdout as JSON objects too.
static JSON_OUTPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The version of every JSON document a command prints (`format_version`):
/// raised when a field changes meaning or goes away.
pub const JSON_FORMAT_VERSION: u32 = 1;

fn json_output() -> bool {
    JSON_OUTPUT.load(std::sync::atomic::Ordering::Relaxed)
}

/// The output a command was asked for (`-o`, else its older spelling
/// `legacy`), refused when the command cannot print it.
fn output(
    command: &str,
    o: Option<Output>,
    legacy: Output,
    allowed: &[Output],
) -> Result<Output, CliError> {
    let o = o.unwrap_or(legacy);
    JSON_OUTPUT.store(o == Output::Json, std::sync::atomic::Ordering::Relaxed);
    if !allowed.contains(&o) {
        let words: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
        return Err(
            CliError::new(format!("{command} cannot print {}", o.name()))
                .help(format!("-o takes {} here", words.join(" or "))),
        );
    }
    Ok(o)
}

/// Run a command; its error, if any, is printed here and nowhere else.
pub fn run(cli: Cli) -> ExitCode {
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    if let Command::ProposalWorker = cli.command {
        // No logging: its stderr is read only to name how it died.
        return crate::daemon::worker::main();
    }
    logging(&cli);
    match dispatch(cli.command) {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            e.report(json_output());
            e.exit_code()
        }
    }
}

/// The command's function, with its arguments.
fn dispatch(command: Command) -> CliResult {
    match command {
        Command::ProposalWorker => unreachable!("run handles it"),
        c @ (Command::Validate { .. }
        | Command::Show { .. }
        | Command::Plan { .. }
        | Command::Log { .. }) => with_output(c),
        Command::Apply {
            repo,
            hosts,
            yes,
            rolling,
            plan_file,
            output: o,
        } => {
            let o = output("apply", o, Output::Text, &[Output::Text, Output::Json])?;
            match plan_file {
                None => apply(&repo, &hosts, yes, rolling, o),
                Some(file) => apply_saved(&repo, &hosts, rolling, &file, o),
            }
        }
        c @ (Command::Run(_)
        | Command::Retry { .. }
        | Command::Suspend { .. }
        | Command::Release { .. }
        | Command::Resume { .. }
        | Command::Status { .. }
        | Command::Reconcile { .. }) => to_daemon(c),
        Command::Secrets { command } => secrets_cmd(command),
        Command::Schedule { command } => schedule_cmd(command),
        Command::Restore(r) => {
            let o = output(
                "restore",
                r.output,
                Output::Text,
                &[Output::Text, Output::Json],
            )?;
            restore_cmd(r, o)
        }
        Command::Import {
            provider,
            server,
            host,
            repo,
            output: o,
        } => {
            let o = output("import", o, Output::Text, &[Output::Text, Output::Json])?;
            import_cmd(provider, &server, &host, &repo, o)
        }
        Command::Completions { shell } => completions(shell),
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
    }
}

/// The commands that print a result as `-o` asks (or its older spellings).
fn with_output(command: Command) -> CliResult {
    match command {
        Command::Validate {
            repo,
            worktree,
            output: o,
            format,
        } => {
            let legacy = match format {
                Format::Json => Output::Json,
                _ => Output::Text,
            };
            let o = output("validate", o, legacy, &[Output::Text, Output::Json])?;
            validate(
                &repo,
                worktree,
                if o == Output::Json {
                    Format::Json
                } else {
                    format
                },
            )
        }
        Command::Show {
            host,
            repo,
            output: o,
            json,
            format,
            facts,
            ssh_key,
        } => {
            let legacy = match (json, format) {
                (true, _) | (_, Some(ShowFormat::Json)) => Output::Json,
                (_, Some(ShowFormat::Markdown)) => Output::Markdown,
                _ => Output::Text,
            };
            let all = [Output::Text, Output::Json, Output::Markdown];
            let o = output("show", o, legacy, &all)?;
            match facts {
                true => show::show_facts(&repo, &host, ssh_key, o == Output::Json),
                false => show::show(&repo, &host, o),
            }
        }
        Command::Plan {
            repo,
            hosts,
            output: o,
            json,
            markdown,
            detailed_exitcode,
            changed_files_only,
            untrusted,
            base,
            out,
        } => plan(
            &repo,
            &hosts,
            untrusted.then_some(base.as_str()),
            PlanFormat::of(output(
                "plan",
                o,
                PlanFormat::legacy(json, markdown),
                &[Output::Text, Output::Json, Output::Markdown],
            )?),
            detailed_exitcode,
            changed_files_only,
            out.as_deref(),
        ),
        Command::Log {
            repo,
            count,
            since,
            output: o,
            json,
            format,
        } => {
            let legacy = match (json, format) {
                (true, _) | (_, Some(LogOutput::Json)) => Output::Json,
                _ => Output::Text,
            };
            let o = output("log", o, legacy, &[Output::Text, Output::Json])?;
            let format = match o {
                Output::Json => LogOutput::Json,
                _ => LogOutput::Text,
            };
            log::log(&repo, count, since, format)
        }
        _ => unreachable!("dispatch sends only the commands with -o here"),
    }
}

/// The commands that run the daemon or ask a running one.
fn to_daemon(command: Command) -> CliResult {
    match command {
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
        } => suspend(daemon, reason, by, api_token.as_deref()),
        Command::Release {
            commit,
            by,
            now,
            daemon,
            api_token,
        } => release::release(daemon, commit, by, now, api_token.as_deref()),
        Command::Status {
            daemon,
            json,
            format,
        } => status::status(
            daemon,
            format.unwrap_or(if json {
                LogOutput::Json
            } else {
                LogOutput::Text
            }),
        ),
        Command::Reconcile {
            daemon,
            api_token,
            wait,
            timeout,
        } => status::reconcile(daemon, api_token.as_deref(), wait, timeout),
        Command::Resume { daemon, api_token } => post_daemon(
            daemon,
            "/resume",
            api_token.as_deref(),
            "",
            "The daemon at {addr} applies and runs jobs again.",
        ),
        _ => unreachable!("dispatch sends only the daemon's commands here"),
    }
}

/// `tidekeeper suspend`: by whom (default: `$USER`) and why, to the daemon.
fn suspend(
    daemon: std::net::SocketAddr,
    reason: String,
    by: Option<String>,
    api_token: Option<&str>,
) -> CliResult {
    let by = by.unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "an operator".into()));
    let body = serde_json::json!({ "by": by, "reason": reason }).to_string();
    post_daemon(
        daemon,
        "/suspend",
        api_token,
        &body,
        "The daemon at {addr} is suspended: no applies, no jobs, until `tidekeeper resume`.",
    )
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

/// `tidekeeper schema`: a config file's JSON schema on stdout, or every
/// schema into `dir`.
fn schema(file: crate::model::schema::ConfigFile, dir: Option<&Path>) -> CliResult {
    use crate::model::schema::ConfigFile;
    let text = |f: ConfigFile| serde_json::to_string_pretty(&f.schema()).expect("json") + "\n";
    let Some(dir) = dir else {
        print!("{}", text(file));
        return Ok(Outcome::Done);
    };
    std::fs::create_dir_all(dir)
        .and_then(|_| {
            ConfigFile::ALL
                .iter()
                .try_for_each(|f| std::fs::write(dir.join(f.file_name()), text(*f)))
        })
        .map_err(|e| CliError::new(format!("writing into {}: {e}", dir.display())))?;
    println!(
        "Wrote {} schemas to {}.",
        ConfigFile::ALL.len(),
        dir.display()
    );
    Ok(Outcome::Done)
}

/// `tidekeeper man`: the page for tidekeeper on stdout, or into `dir` the
/// page for tidekeeper and one for each command (tidekeeper-plan.1, …).
fn man(dir: Option<&Path>) -> CliResult {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .and_then(|()| pipe::write_stdout(&page))
            .map_err(CliError::new)?;
        return Ok(Outcome::Done);
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
    let n = std::fs::create_dir_all(dir)
        .and_then(|_| pages(dir, "tidekeeper", cmd))
        .map_err(|e| {
            CliError::new(format!(
                "cannot write the manual pages to {}: {e}",
                dir.display()
            ))
        })?;
    println!("Wrote {n} manual pages to {}.", dir.display());
    Ok(Outcome::Done)
}

/// Config files edited but not committed, said on stderr when the command
/// reads HEAD: plan and apply act on the commit, never on the work tree,
/// and a user who forgot to commit would otherwise see an old plan.
fn warn_uncommitted(repo: &RepoArgs, what_happens: &str) {
    if repo.refname != "HEAD" || QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let changed = source::discover(&repo.repo)
        .map(|p| source::uncommitted(&p))
        .unwrap_or_default();
    if !changed.is_empty() {
        let shown: Vec<&str> = changed.iter().take(5).map(String::as_str).collect();
        eprintln!(
            "warning: {} config file{} with uncommitted changes ({}{}): {what_happens}",
            changed.len(),
            plural(changed.len()),
            shown.join(", "),
            if changed.len() > 5 { ", …" } else { "" }
        );
    }
}

fn read_tree(repo: &RepoArgs) -> Result<ConfigTree, CliError> {
    let path = source::discover(&repo.repo).map_err(CliError::new)?;
    ConfigTree::from_git(&path, &repo.refname).map_err(CliError::new)
}

/// The shell's registration of tidekeeper's completions: the shell calls
/// `tidekeeper` back (COMPLETE=SHELL) for each completion, so host, group,
/// label, job and sink names come from the repo at hand.
fn completions(shell: clap_complete::Shell) -> CliResult {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| CliError::new(format!("no completions for {name}")))?;
    let mut out = Vec::new();
    completer
        .write_registration(
            "COMPLETE",
            "tidekeeper",
            "tidekeeper",
            "tidekeeper",
            &mut out,
        )
        .map_err(|e| CliError::new(format!("writing the completions: {e}")))?;
    pipe::write_stdout(&out).map_err(|e| CliError::new(format!("writing the completions: {e}")))?;
    Ok(Outcome::Done)
}

/// Load the fleet; when it does not load, its diagnostics laid out for `format`.
fn load(tree: &ConfigTree, format: Format) -> Result<Fleet, CliError> {
    load_by(tree, format, model::load)
}

/// [`load`] by `loader` (one that allows what `load` does not).
fn load_by(
    tree: &ConfigTree,
    format: Format,
    loader: fn(&ConfigTree) -> Result<Fleet, model::Diagnostics>,
) -> Result<Fleet, CliError> {
    // `-o json` on any command: its config errors are JSON too.
    let format = if json_output() { Format::Json } else { format };
    let checked = loader(tree).and_then(crate::engine::kinds::known_settings);
    if let Ok(fleet) = &checked
        && format != Format::Json
        && !QUIET.load(std::sync::atomic::Ordering::Relaxed)
    {
        for w in &fleet.warnings {
            eprintln!("{}", w.warning_text());
        }
    }
    checked.map_err(|diags| {
        let n = diags.len();
        let (stdout, mut stderr) = match format {
            Format::Json => (
                format!(
                    "{}\n",
                    serde_json::json!({
                        "format_version": JSON_FORMAT_VERSION,
                        "valid": false,
                        "commit": tree.commit,
                        "errors": diags,
                    })
                ),
                String::new(),
            ),
            Format::Short => (String::new(), diags.to_string()),
            Format::Human => {
                let color =
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                let text = model::diag::render(&diags, &|f| tree.text(f), color);
                (String::new(), text)
            }
        };
        if format != Format::Json {
            stderr.push_str(&format!(
                "{n} error{} in the config repo{}\n",
                plural(n),
                at_commit(tree)
            ));
        }
        CliError::diagnostics(stdout, stderr)
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Load, and load again with the age identity when one is configured, so
/// secrets are decrypted (in memory only).
fn load_decrypted(tree: &ConfigTree) -> Result<Fleet, CliError> {
    let format = if json_output() {
        Format::Json
    } else {
        Format::Human
    };
    let fleet = load(tree, format)?;
    match crate::secrets::identity(&fleet.settings) {
        Ok(None) => Ok(fleet),
        Ok(Some(id)) => model::load_with_identity(tree, Some(&id)).map_err(|diags| {
            let json = serde_json::json!({
                "format_version": JSON_FORMAT_VERSION,
                "valid": false,
                "commit": tree.commit,
                "errors": diags,
            });
            match format {
                Format::Json => CliError::diagnostics(format!("{json}\n"), String::new()),
                _ => CliError::diagnostics(String::new(), diags.to_string()),
            }
        }),
        Err(e) => Err(CliError::new(e)),
    }
}

/// Ask on the terminal: `question`, and only "yes" is a yes. None:
/// without a terminal there is no one to ask.
fn ask(question: &str) -> Option<bool> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    print!("\n{question} Only 'yes' will be accepted: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    Some(answer.trim() == "yes")
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

fn prepare(repo: &RepoArgs, args: &HostArgs) -> Result<Prepared, CliError> {
    warn_uncommitted(repo, "this uses HEAD, not them; commit them first");
    let tree = read_tree(repo)?;
    let fleet = load_decrypted(&tree)?;
    let names = choose(&fleet, args)?;
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

/// The hosts `args` choose in `fleet` (`--host` names and globs, `-l`
/// labels), or an error naming what matched nothing.
fn choose(fleet: &Fleet, args: &HostArgs) -> Result<Vec<String>, CliError> {
    model::select::Selector::new(&args.hosts, &args.labels)
        .map_err(CliError::new)?
        .select(fleet)
        .map_err(|e| CliError::new(e.message).help(e.help))
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
                    changes.pending_short(),
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
