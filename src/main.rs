//! The `tidekeeper` binary: arguments parsed, then everything is in [`tidekeeper::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `tidekeeper … | head -1`: the closed pipe ends any command quietly.
    tidekeeper::cli::end_quietly_when_output_is_closed();
    // The shell asking for completions (COMPLETE=bash …): answered with the
    // names in the repo, then exit; see `tidekeeper completions`.
    clap_complete::CompleteEnv::with_factory(
        <tidekeeper::cli::Cli as clap::CommandFactory>::command,
    )
    .complete();
    tidekeeper::cli::run(tidekeeper::cli::Cli::parse())
}
