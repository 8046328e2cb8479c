//! `tidekeeper apply`: plan, show, confirm, apply, and say what was done;
//! `apply FILE`: the same for a saved plan that still holds.

use super::plan::plan_fleet;
use super::*;

pub(super) fn apply(
    repo: &RepoArgs,
    args: &HostArgs,
    yes: bool,
    rolling: bool,
    output: Output,
) -> CliResult {
    let json = output == Output::Json;
    if json && !yes {
        return Err(CliError::new("apply -o json does not ask before applying")
            .help("add --yes, or apply a saved plan: tidekeeper apply FILE -o json"));
    }
    let (fleet, names, mut opts, policies) = prepare(repo, args)?;
    opts.rolling = rolling;
    let total = names.len();
    let opts = std::sync::Arc::new(opts);
    let clouds = crate::cloud::Clouds::from_env(&fleet);
    let rt = runtime();
    let pool = engine::Pool::new();
    let fp = plan_fleet(&rt, fleet, names, args, &opts, &clouds, json, &pool);
    let (shown, planned) = show(&fp, &policies, &opts, json);
    let stop = match shown {
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
        planned,
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
    output: Output,
) -> CliResult {
    let json = output == Output::Json;
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
    let fp = plan_fleet(&rt, fleet, names, &args, &opts, &clouds, json, &pool);
    let fresh = super::saved::of(&fp, &fp.gate(&policies), &args, &opts);
    let moved = crate::saved_plan::differences(&saved, &fresh);
    let mut run = Run {
        rt: &rt,
        pool: &pool,
        opts: &opts,
        clouds: &clouds,
        total,
        planned: None,
    };
    if !moved.is_empty() {
        return run.finish(fp, Some(Stop::Refused(super::saved::stale(&moved))));
    }
    let (shown, planned) = show(&fp, &policies, &opts, json);
    run.planned = planned;
    let stop = match shown {
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
    /// `-o json`: the plan's document, printed with what was done.
    planned: Option<serde_json::Value>,
}

impl Run<'_> {
    /// Apply `fp`, or close its connections and say why not (`stop`).
    fn finish(&self, fp: reconcile::FleetPlan, stop: Option<Stop>) -> CliResult {
        if let Some(stop) = stop {
            let results = self.rt.block_on(reconcile::finish(fp, self.pool.clone()));
            let (outcome, word) = match stop {
                Stop::Refused(e) => return Err(e),
                Stop::Said(o) => (o, "not applied"),
                // A blocked host has work left that cannot be done: not a success.
                Stop::NothingToDo { blocked } => (
                    Outcome::failed_if(blocked || results.iter().any(|r| r.error.is_some())),
                    "nothing to do",
                ),
            };
            self.print_json(word, None);
            return Ok(outcome);
        }
        let done = self.rt.block_on(reconcile::apply(
            fp,
            self.pool,
            self.opts.clone(),
            self.clouds,
            progress(self.total, false),
        ));
        if self.planned.is_some() {
            let failed = failures(&done) > 0;
            self.print_json(if failed { "failed" } else { "applied" }, Some(&done));
            return Ok(Outcome::failed_if(failed));
        }
        Ok(summary(&done, self.opts))
    }

    /// With `-o json`: one document, the plan and what was done.
    fn print_json(&self, outcome: &str, done: Option<&reconcile::Applied>) {
        let Some(plan) = &self.planned else {
            return;
        };
        let mut doc = serde_json::json!({
            "format_version": plan["format_version"],
            "fleet": plan["fleet"],
            "commit": plan["commit"],
            "outcome": outcome,
            "plan": plan,
        });
        if let Some(done) = done {
            doc["applied"] = reconcile::applied_json(done);
        }
        let text = serde_json::to_string_pretty(&doc).expect("json");
        println!("{}", self.opts.redact(&text));
    }
}

/// Hosts and servers that failed.
fn failures(done: &reconcile::Applied) -> usize {
    done.hosts.iter().filter(|r| r.error.is_some()).count()
        + done.cloud.iter().filter(|o| o.error.is_some()).count()
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

/// Print the plan and the policies' verdict (`json`: keep the plan's
/// document for the end instead); whether it may be applied.
fn show(
    fp: &reconcile::FleetPlan,
    policies: &[(String, String)],
    opts: &engine::Options,
    json: bool,
) -> (Shown, Option<serde_json::Value>) {
    let results = fp.results();
    let reconcile::Gate { verdict, refusals } = fp.gate(policies);
    let t = reconcile::totals(fp.cloud.as_ref(), &results);
    let planned = json.then(|| {
        let commit = fp.fleet.commit.clone().unwrap_or_default();
        let mut doc = crate::report::plan_json(
            &crate::report::Review {
                fleet: &fp.fleet.name,
                commit: &commit,
                cloud: fp.cloud.as_ref(),
                results: &results,
                verdict: &verdict,
                after_merge: &[],
            },
            false,
        );
        doc["refusals"] = serde_json::json!(refusals);
        doc
    });
    // Said on stdout as text; in the JSON document otherwise.
    let say = |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    if !json {
        print!(
            "{}",
            opts.redact(&reconcile::text(fp.cloud.as_ref(), &results, color()))
        );
        if fp.has_changes() {
            print!("\n{}", opts.redact(&verdict.render()));
        }
    }
    let shown = if verdict.blocks() {
        say("The policies deny this plan; nothing was applied.");
        Shown::Stop(Stop::Said(Outcome::Failed))
    } else if !refusals.is_empty() {
        say("Not applying this plan; nothing was changed:");
        for r in &refusals {
            say(&format!("  {r}"));
        }
        Shown::Stop(Stop::Said(Outcome::Failed))
    } else if t.add + t.change + t.destroy + t.run == 0 {
        Shown::Stop(Stop::NothingToDo {
            blocked: t.blocked > 0,
        })
    } else {
        Shown::Changes
    };
    (shown, planned)
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
    let failed = failures(done);
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
