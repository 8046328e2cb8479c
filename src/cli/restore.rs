//! `tidekeeper restore`: its arguments to `maintenance::restore`, and the
//! preview, the question and the result on the terminal.

use super::*;
use crate::maintenance::restore::{self, Answer, Request, RestoreError, Restored};

pub(super) fn restore_cmd(r: RestoreArgs, output: Output) -> CliResult {
    let json = output == Output::Json;
    if json && !r.yes {
        return Err(
            CliError::new("restore -o json does not ask before restoring")
                .help("add --yes once the snapshot and host are the ones you mean"),
        );
    }
    let hosts = HostArgs {
        hosts: r.host.iter().cloned().collect(),
        labels: r.labels.clone(),
        parallel: None,
        ssh_key: r.ssh_key.clone(),
        allow_mass_delete: false,
        allow_destroy: false,
        rollback_after: std::time::Duration::from_secs(120),
    };
    if hosts.selects_all() {
        return Err(CliError::new(
            "name the one host to restore with --host NAME",
        ));
    }
    let (fleet, chosen, opts, _) = prepare(&r.repo, &hosts)?;
    let [host] = chosen.as_slice() else {
        return Err(CliError::new(format!(
            "{} chooses {} hosts ({}); a restore is onto one host",
            hosts_said(&hosts),
            chosen.len(),
            chosen.join(", ")
        ))
        .help("name the one host with --host NAME"));
    };
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
        if !json {
            print!("{preview}");
        }
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
    if json {
        let (outcome, snapshot, seconds) = match &restored {
            Restored::Done { short_id, elapsed } => {
                ("restored", Some(short_id.as_str()), elapsed.as_secs_f64())
            }
            Restored::Cancelled => ("cancelled", None, 0.0),
        };
        let doc = serde_json::json!({
            "format_version": JSON_FORMAT_VERSION,
            "commit": fleet.commit,
            "job": r.job,
            "host": host,
            "outcome": outcome,
            "snapshot": snapshot,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(Outcome::Done);
    }
    match restored {
        Restored::Done { short_id, elapsed } => println!(
            "Restore complete: snapshot {short_id} on {host} ({:.1}s).",
            elapsed.as_secs_f64()
        ),
        Restored::Cancelled => println!("Restore cancelled."),
    }
    Ok(Outcome::Done)
}

fn hosts_said(h: &HostArgs) -> String {
    model::select::Selector::new(&h.hosts, &h.labels)
        .map(|s| s.describe())
        .unwrap_or_default()
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
