//! `tidekeeper schedule list` and `schedule run`: the maintenance jobs'
//! schedules, and one job run now.

use super::*;
use crate::model::desired::{Job, JobKind};

pub(super) fn schedule_cmd(cmd: ScheduleCommand) -> CliResult {
    match cmd {
        ScheduleCommand::List {
            repo,
            next,
            now,
            output: o,
        } => match output(
            "schedule list",
            o,
            Output::Text,
            &[Output::Text, Output::Json],
        )? {
            Output::Json => list_json(&repo, next, &now),
            _ => list(&repo, next, &now),
        },
        ScheduleCommand::Run {
            job,
            repo,
            hosts,
            output: o,
            json,
            ignore_window,
            now,
        } => {
            let legacy = if json { Output::Json } else { Output::Text };
            let o = output("schedule run", o, legacy, &[Output::Text, Output::Json])?;
            run_now(&job, &repo, hosts, o == Output::Json, ignore_window, &now)
        }
    }
}

/// `schedule list`: each job, its hosts, what a power schedule saves,
/// and its next `next` runs.
fn list(repo: &RepoArgs, next: usize, now: &NowArg) -> CliResult {
    let tree = read_tree(repo)?;
    let fleet = load(&tree, Format::Human)?;
    if fleet.jobs.is_empty() {
        println!("No maintenance jobs (schedules.yaml).");
        return Ok(Outcome::Done);
    }
    let now = now.clock().now();
    // Prices for what power schedules save (only when the provider answers).
    let power = fleet
        .jobs
        .iter()
        .any(|j| matches!(j.kind, JobKind::Power { .. }));
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
        if matches!(job.kind, JobKind::Power { .. }) {
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
        print!("{}", next_runs(job, now, next));
    }
    Ok(Outcome::Done)
}

/// `schedule list -o json`: each job, its hosts and its next `next` runs.
fn list_json(repo: &RepoArgs, next: usize, now: &NowArg) -> CliResult {
    let tree = read_tree(repo)?;
    let fleet = load(&tree, Format::Json)?;
    let now = now.clock().now();
    let jobs: Vec<serde_json::Value> = fleet
        .jobs
        .iter()
        .map(|job| {
            let mut runs = vec![];
            let mut t = now;
            while runs.len() < next {
                let Some(n) = crate::maintenance::plan::next(job, t) else {
                    break;
                };
                runs.push(n.to_rfc3339());
                t = n;
            }
            serde_json::json!({
                "name": job.name,
                "kind": job.kind.name(),
                "cron": job.cron,
                "timezone": job.timezone,
                "window": job.window.as_ref().map(|w| w.to_string()),
                "hosts": job.hosts,
                "next": runs,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "format_version": JSON_FORMAT_VERSION,
        "fleet": fleet.name,
        "commit": fleet.commit,
        "jobs": jobs,
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    Ok(Outcome::Done)
}

/// The job's next `n` runs after `now`, in its time zone, a line each.
fn next_runs(job: &Job, now: chrono::DateTime<chrono::Utc>, n: usize) -> String {
    let tz = crate::schedule::parse_tz(&job.timezone).unwrap_or(chrono_tz::UTC);
    let mut out = String::new();
    let mut t = now;
    for _ in 0..n {
        let Some(next) = crate::maintenance::plan::next(job, t) else {
            break;
        };
        out.push_str(&format!(
            "  next: {}\n",
            next.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z")
        ));
        t = next;
    }
    out
}

/// `schedule run`: the job now, on its hosts (or only `hosts.hosts`).
fn run_now(
    job: &str,
    repo: &RepoArgs,
    hosts: HostArgs,
    json: bool,
    ignore_window: bool,
    now: &NowArg,
) -> CliResult {
    let args = HostArgs {
        hosts: vec![],
        labels: vec![],
        ..hosts.clone()
    };
    let (fleet, _, mut opts, _) = prepare(repo, &args)?;
    let only = match hosts.selects_all() {
        true => vec![],
        false => choose(&fleet, &hosts)?,
    };
    let Some(j) = fleet.jobs.iter().find(|j| j.name == job) else {
        let names: Vec<&str> = fleet.jobs.iter().map(|j| j.name.as_str()).collect();
        return Err(CliError::new(format!("no job named {job:?}"))
            .help(format!("jobs are: {}", names.join(", "))));
    };
    if !only.is_empty() && !j.hosts.iter().any(|h| only.contains(h)) {
        return Err(CliError::new(format!(
            "job {job:?} runs on {}: none of them is chosen by {}",
            j.hosts.join(", "),
            model::select::Selector::new(&hosts.hosts, &hosts.labels)
                .map(|s| s.describe())
                .unwrap_or_default()
        ))
        .help("choose hosts of the job, or leave out --host and -l to run it on all of them"));
    }
    opts.clock = now.clock();
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let mut j = j.clone();
    if ignore_window {
        j.window = None;
    }
    let run = runtime().block_on(crate::maintenance::run::run_job(
        &fleet, &j, &only, &opts, &clouds,
    ));
    if json {
        let mut doc = serde_json::to_value(&run).expect("json");
        doc["format_version"] = JSON_FORMAT_VERSION.into();
        doc["commit"] = fleet.commit.clone().into();
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        print!("{}", crate::maintenance::render(&run));
    }
    Ok(Outcome::failed_if(!run.ok || run.not_started.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn next_runs_are_listed_in_the_jobs_time_zone() {
        let mut tree = ConfigTree::default();
        tree.insert_file("tidekeeper.yaml", b"fleet: f\n".to_vec());
        tree.insert_file(
            "hosts/a.yaml",
            b"provider: existing\naddress: 10.0.0.9\n".to_vec(),
        );
        tree.insert_file(
            "schedules.yaml",
            b"jobs:\n  - {name: tidy, cron: \"30 3 * * *\", timezone: Europe/Berlin, hosts: {names: [a]}, command: {run: x}}\n"
                .to_vec(),
        );
        let fleet = model::load(&tree).unwrap_or_else(|d| panic!("{d}"));
        let now = chrono::Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(
            next_runs(&fleet.jobs[0], now, 2),
            "  next: Sat 2027-01-02 03:30 CET\n  next: Sun 2027-01-03 03:30 CET\n"
        );
        assert_eq!(next_runs(&fleet.jobs[0], now, 0), "");
    }
}
