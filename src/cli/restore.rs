//! `tidekeeper restore`: a backup's snapshot back onto its host, after a
//! preview and a confirmation.

use super::*;
use crate::maintenance::restore::{self, Request};

pub(super) fn restore_cmd(r: RestoreArgs) -> u8 {
    let [host] = r.hosts.hosts.as_slice() else {
        eprintln!("error: name the one host to restore with --host NAME");
        return EXIT_ERROR;
    };
    let (fleet, _, opts, _) = match prepare(&r.repo, &r.hosts) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(job) = fleet.jobs.iter().find(|j| j.name == r.job) else {
        let names: Vec<&str> = fleet
            .jobs
            .iter()
            .filter(|j| matches!(j.kind, crate::model::desired::JobKind::Backup { .. }))
            .map(|j| j.name.as_str())
            .collect();
        eprintln!(
            "error: no job named {:?}\n  help: backup jobs are: {}",
            r.job,
            names.join(", ")
        );
        return EXIT_ERROR;
    };
    let req = match Request::new(
        job,
        host,
        &r.snapshot,
        r.path.as_deref(),
        r.target.as_deref(),
        r.database.as_deref(),
        r.replace,
    ) {
        Ok(req) => req,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let crate::model::desired::JobKind::Backup {
        password_secret, ..
    } = &job.kind
    else {
        unreachable!("Request::new accepts backup jobs only");
    };
    let Some(password) = fleet.secret_values.0.get(password_secret).cloned() else {
        eprintln!(
            "error: the backup's password secret {password_secret:?} could not be decrypted\n  help: give the age identity (TIDEKEEPER_AGE_IDENTITY or secrets.identity_file)"
        );
        return EXIT_ERROR;
    };
    let rt = runtime();
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let fleet = rt.block_on(crate::maintenance::run::with_addresses(&fleet, &clouds));
    let Some(h) = fleet.host(host) else {
        return EXIT_ERROR;
    };
    let conn = match rt.block_on(engine::connect(&fleet, h, &opts)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {host}: {e}");
            return EXIT_ERROR;
        }
    };
    let timeout = std::time::Duration::from_secs(job.timeout_secs.max(60));
    let run = |script: String| rt.block_on(conn.run_script(&script, timeout));
    let out = match run(restore::preview_script(job, &req, &password)) {
        Ok(o) if o.success() => o,
        Ok(o) => {
            eprintln!(
                "error: {host}: restic could not list {} of job {}: {}",
                req.snapshot,
                job.name,
                opts.redact(&o.stderr_text())
            );
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {host}: {e}");
            return EXIT_ERROR;
        }
    };
    let preview = match restore::parse_preview(&String::from_utf8_lossy(&out.stdout)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {host}: {e}");
            return EXIT_INVALID;
        }
    };
    if matches!(req.what, restore::What::Database { .. }) && preview.files == 0 {
        eprintln!(
            "error: snapshot {} holds no database dump of job {}",
            preview.short_id, job.name
        );
        return EXIT_INVALID;
    }
    print!("{}", restore::render_preview(job, &req, &preview));
    if !r.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error: not restoring without confirmation; run with --yes to restore non-interactively"
            );
            return EXIT_ERROR;
        }
        print!("\nRestore? Only 'yes' will be accepted: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "yes" {
            println!("Restore cancelled.");
            return EXIT_OK;
        }
    }
    let start = std::time::Instant::now();
    match run(restore::restore_script(
        job,
        &req,
        &password,
        &preview.snapshot,
    )) {
        Ok(o) if o.success() && String::from_utf8_lossy(&o.stdout).contains("@@restored") => {
            println!(
                "Restore complete: snapshot {} on {host} ({:.1}s).",
                preview.short_id,
                start.elapsed().as_secs_f64()
            );
            EXIT_OK
        }
        Ok(o) => {
            eprintln!(
                "error: {host}: the restore failed: {}",
                opts.redact(&o.stderr_text())
            );
            EXIT_INVALID
        }
        Err(e) => {
            eprintln!("error: {host}: {e}");
            EXIT_ERROR
        }
    }
}
