//! `tidekeeper restore`: its arguments to `maintenance::restore`, and the
//! preview, the question and the result on the terminal.

use super::*;
use crate::maintenance::restore::{self, Answer, Request, RestoreError, Restored};

pub(super) fn restore_cmd(r: RestoreArgs) -> CliResult {
    let [host] = r.hosts.hosts.as_slice() else {
        return Err(CliError::new(
            "name the one host to restore with --host NAME",
        ));
    };
    let (fleet, _, opts, _) = prepare(&r.repo, &r.hosts)?;
    let job = restore::job(&fleet, &r.job).map_err(cli_error)?;
    let req = Request::new(
        job,
        host,
        &r.snapshot,
        r.path.as_deref(),
        r.target.as_deref(),
        r.database.as_deref(),
        r.replace,
    )
    .map_err(cli_error)?;
    let confirm = |preview: &str| {
        print!("{preview}");
        if r.yes {
            return Answer::Yes;
        }
        match ask("Restore?") {
            Some(true) => Answer::Yes,
            Some(false) => Answer::No,
            None => Answer::Unasked,
        }
    };
    let rt = runtime();
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let restored = rt
        .block_on(restore::run(&fleet, &clouds, job, &req, &opts, confirm))
        .map_err(cli_error)?;
    match restored {
        Restored::Done { short_id, elapsed } => println!(
            "Restore complete: snapshot {short_id} on {host} ({:.1}s).",
            elapsed.as_secs_f64()
        ),
        Restored::Cancelled => println!("Restore cancelled."),
    }
    Ok(Outcome::Done)
}

fn cli_error(e: RestoreError) -> CliError {
    let help = e.help();
    let error = if e.is_invalid() {
        CliError::invalid(e)
    } else {
        CliError::new(e)
    };
    match help {
        Some(h) => error.help(h),
        None => error,
    }
}
