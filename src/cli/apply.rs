//! `tidekeeper apply`: plan, show, confirm, apply, and say what was done;
//! `apply FILE`: the same for a saved plan that still holds.

use super::plan::plan_fleet;
use super::*;

pub(super) fn apply(repo: &RepoArgs, args: &HostArgs, yes: bool, rolling: bool) -> CliResult {
    let (fleet, names, mut opts, policies) = prepare(repo, args)?;
    opts.rolling = rolling;
    let total = names.len();
    let opts = std::sync::Arc::new(opts);
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let rt = runtime();
    let pool = engine::Pool::new();
    let fp = plan_fleet(&rt, fleet, names, args, &opts, &clouds, false, &pool);
    let stop = match show(&fp, &policies, &opts) {
        Shown::Changes if yes => None,
        Shown::Changes => confirm(),
        Shown::Stop(stop) => Some(stop),
    };
    let run = Run {
        rt: &rt,
        pool: &pool,
        opts: &opts,
        clouds: &clouds,
        total,
    };
    run.finish(fp, stop)
}

/// `tidekeeper apply FILE`: plan the saved plan's commit and hosts again,
/// and apply the fresh plan only when it is the saved plan; otherwise
/// refuse, naming what moved. Nothing is asked: the plan was reviewed.
pub(super) fn apply_saved(
    repo: &RepoArgs,
    args: &HostArgs,
    rolling: bool,
    file: &Path,
) -> CliResult {
    let saved = super::saved::read(file)?;
    if !args.selects_all() {
        return Err(
            CliError::new("a saved plan is applied to the hosts it was planned for")
                .help("leave out --host and -l (or plan again with them)"),
        );
    }
    super::saved::same_commit(&saved, &read_tree(repo)?)?;
    let args = HostArgs {
        hosts: saved.plan.selected.clone(),
        labels: vec![],
        allow_destroy: saved.plan.allow_destroy,
        allow_mass_delete: saved.plan.allow_mass_delete,
        ..args.clone()
    };
    let (fleet, names, mut opts, policies) = prepare(repo, &args)?;
    opts.rolling = rolling;
    opts.digest_observed = true;
    let total = names.len();
    let opts = std::sync::Arc::new(opts);
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let rt = runtime();
    let pool = engine::Pool::new();
    let fp = plan_fleet(&rt, fleet, names, &args, &opts, &clouds, false, &pool);
    let fresh = super::saved::of(&fp, &fp.gate(&policies), &args, &opts);
    let moved = crate::saved_plan::differences(&saved, &fresh);
    let run = Run {
        rt: &rt,
        pool: &pool,
        opts: &opts,
        clouds: &clouds,
        total,
    };
    if !moved.is_empty() {
        return run.finish(fp, Some(Stop::Refused(super::saved::stale(&moved))));
    }
    let stop = match show(&fp, &policies, &opts) {
        Shown::Changes => None,
        Shown::Stop(stop) => Some(stop),
    };
    run.finish(fp, stop)
}

/// What applying a shown plan needs.
struct Run<'a> {
    rt: &'a tokio::runtime::Runtime,
    pool: &'a engine::Pool,
    opts: &'a std::sync::Arc<engine::Options>,
    clouds: &'a crate::cloud::Clouds,
    total: usize,
}

impl Run<'_> {
    /// Apply `fp`, or close its connections and say why not (`stop`).
    fn finish(&self, fp: reconcile::FleetPlan, stop: Option<Stop>) -> CliResult {
        if let Some(stop) = stop {
            let results = self.rt.block_on(reconcile::finish(fp, self.pool.clone()));
            return match stop {
                Stop::Refused(e) => Err(e),
                Stop::Said(o) => Ok(o),
                // A blocked host has work left that cannot be done: not a success.
                Stop::NothingToDo { blocked } => Ok(Outcome::failed_if(
                    blocked || results.iter().any(|r| r.error.is_some()),
                )),
            };
        }
        let done = self.rt.block_on(reconcile::apply(
            fp,
            self.pool,
            self.opts.clone(),
            self.clouds,
            progress(self.total, false),
        ));
        Ok(summary(&done, self.opts))
    }
}

/// What the plan, once shown, leaves to do.
enum Shown {
    /// Changes to apply, once confirmed.
    Changes,
    Stop(Stop),
}

/// Why nothing is applied.
enum Stop {
    /// Nothing to apply; `blocked`: hosts have work left that cannot be done.
    NothingToDo { blocked: bool },
    /// Said why on stdout.
    Said(Outcome),
    /// For an error.
    Refused(CliError),
}

/// Print the plan and the policies' verdict; whether it may be applied.
fn show(fp: &reconcile::FleetPlan, policies: &[(String, String)], opts: &engine::Options) -> Shown {
    let results = fp.results();
    print!(
        "{}",
        opts.redact(&reconcile::text(fp.cloud.as_ref(), &results, color()))
    );
    let t = reconcile::totals(fp.cloud.as_ref(), &results);
    let reconcile::Gate { verdict, refusals } = fp.gate(policies);
    if fp.has_changes() {
        print!("\n{}", opts.redact(&verdict.render()));
    }
    if verdict.blocks() {
        println!("The policies deny this plan; nothing was applied.");
        return Shown::Stop(Stop::Said(Outcome::Failed));
    }
    if !refusals.is_empty() {
        println!("Not applying this plan; nothing was changed:");
        for r in refusals {
            println!("  {r}");
        }
        return Shown::Stop(Stop::Said(Outcome::Failed));
    }
    if t.add + t.change + t.destroy + t.run == 0 {
        return Shown::Stop(Stop::NothingToDo {
            blocked: t.blocked > 0,
        });
    }
    Shown::Changes
}

/// Ask before applying; None: go ahead.
fn confirm() -> Option<Stop> {
    match ask("Apply these changes?") {
        Some(true) => None,
        Some(false) => {
            println!("Apply cancelled.");
            Some(Stop::Said(Outcome::Done))
        }
        None => Some(Stop::Refused(CliError::new(
            "not applying without confirmation; run with --yes to apply non-interactively",
        ))),
    }
}

/// What was done, host by host and in all.
fn summary(done: &reconcile::Applied, opts: &engine::Options) -> Outcome {
    println!();
    print!("{}", opts.redact(&reconcile::cloud_summary(&done.cloud)));
    println!(
        "{}",
        opts.redact(engine::render::apply_summary(&done.hosts).trim_end())
    );
    for r in &done.hosts {
        if let Some(line) = &r.generated_host_key {
            println!(
                "{}: host key generated by tidekeeper and verified; to pin it, add to known_hosts:\n  {line}",
                r.host
            );
        }
    }
    let failed = done.hosts.iter().filter(|r| r.error.is_some()).count()
        + done.cloud.iter().filter(|o| o.error.is_some()).count();
    // Counted from what each host reported done, failed hosts included:
    // the totals are what changed on the hosts, not what was planned.
    let applied = engine::render::done_totals(&done.hosts);
    if failed > 0 {
        println!(
            "{failed} host{} or server{} failed; done in all: {}.",
            plural(failed),
            plural(failed),
            applied.done()
        );
        Outcome::Failed
    } else {
        println!("Apply complete: {}.", applied.done());
        Outcome::Done
    }
}
