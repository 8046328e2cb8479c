use clap::Parser;

fn main() -> std::process::ExitCode {
    tidekeeper::cli::run(tidekeeper::cli::Cli::parse())
}
