//! `tidekeeper schedule …`: the maintenance jobs' schedules.

use super::*;

pub(super) fn schedule_cmd(cmd: ScheduleCommand) -> u8 {
    match cmd {
        ScheduleCommand::List { repo, next, now } => {
            let tree = match read_tree(&repo) {
                Ok(t) => t,
                Err(c) => return c,
            };
            let fleet = match load(&tree, Format::Human) {
                Ok(f) => f,
                Err(c) => return c,
            };
            if fleet.jobs.is_empty() {
                println!("No maintenance jobs (schedules.yaml).");
                return EXIT_OK;
            }
            let now = now.clock().now();
            // Prices for what power schedules save (only when the provider answers).
            let power = fleet
                .jobs
                .iter()
                .any(|j| matches!(j.kind, crate::model::desired::JobKind::Power { .. }));
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
                if matches!(job.kind, crate::model::desired::JobKind::Power { .. }) {
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
                let tz = crate::schedule::parse_tz(&job.timezone).unwrap_or(chrono_tz::UTC);
                let mut t = now;
                for _ in 0..next {
                    match crate::maintenance::plan::next(job, t) {
                        Some(n) => {
                            println!(
                                "  next: {}",
                                n.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z")
                            );
                            t = n;
                        }
                        None => break,
                    }
                }
            }
            EXIT_OK
        }
        ScheduleCommand::Run {
            job,
            repo,
            hosts,
            json,
            ignore_window,
            now,
        } => {
            let only = hosts.hosts.clone();
            let args = HostArgs {
                hosts: vec![],
                ..hosts
            };
            let (fleet, _, mut opts, _) = match prepare(&repo, &args) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let Some(j) = fleet.jobs.iter().find(|j| j.name == job) else {
                let names: Vec<&str> = fleet.jobs.iter().map(|j| j.name.as_str()).collect();
                eprintln!(
                    "error: no job named {job:?}\n  help: jobs are: {}",
                    names.join(", ")
                );
                return EXIT_ERROR;
            };
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
                println!("{}", serde_json::to_string_pretty(&run).expect("json"));
            } else {
                print!("{}", crate::maintenance::render(&run));
            }
            if run.ok && run.not_started.is_none() {
                EXIT_OK
            } else {
                EXIT_INVALID
            }
        }
    }
}
