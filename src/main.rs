//! The `tidekeeper` binary: arguments parsed, then everything is in [`tidekeeper::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    tidekeeper::cli::run(tidekeeper::cli::Cli::parse())
}
